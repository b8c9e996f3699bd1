//! The raw `bpf(2)` system call, for the commands aya 0.14 has no public API
//! for. Every command daxrace issues itself is numbered here (uapi
//! `enum bpf_cmd`); the callers build their `union bpf_attr`.
use std::io;

pub const BPF_PROG_LOAD: libc::c_long = 5;
pub const BPF_PROG_TEST_RUN: libc::c_long = 10;
pub const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
pub const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
pub const BPF_BTF_GET_FD_BY_ID: libc::c_long = 19;
pub const BPF_TASK_FD_QUERY: libc::c_long = 20;
pub const BPF_BTF_GET_NEXT_ID: libc::c_long = 23;

/// `BPF_PROG_TEST_RUN` of a loaded program with `ctx` as its context (the
/// kernel copies it in, and back where the program type allows): the
/// program's return value.
pub fn prog_test_run<C>(prog: std::os::fd::BorrowedFd<'_>, ctx: &mut C) -> io::Result<i32> {
    use std::os::fd::AsRawFd;
    let mut attr = [0u64; 16];
    attr[0] = prog.as_raw_fd() as u64;
    // ctx_size_in (low half of word 5) and ctx_in (word 6).
    attr[5] = std::mem::size_of::<C>() as u64;
    attr[6] = ctx as *mut C as u64;
    // SAFETY: a `union bpf_attr` for BPF_PROG_TEST_RUN with one context
    // buffer, valid for its size.
    unsafe { bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
    // retval: the high half of word 0.
    Ok((attr[0] >> 32) as u32 as i32)
}

/// `bpf(cmd, attr, sizeof(*attr))`: the command's result, or the error the
/// kernel set.
///
/// # Safety
/// `attr` must be a `union bpf_attr` for `cmd` (unused bytes zero), and every
/// buffer it points to must be valid for what the kernel reads or writes
/// there, for the length the attribute gives.
pub unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for the attribute and its buffers; the
    // kernel reads and writes only within them.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut A,
            std::mem::size_of::<A>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
