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
