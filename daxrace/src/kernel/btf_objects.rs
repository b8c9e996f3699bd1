//! Finds a kernel module's BTF object among those the kernel has loaded, so
//! fentry/fexit programs can be loaded against the module's functions
//! (`attach_btf_obj_fd`), and reads kernel BTF in one copy. Three `bpf(2)`
//! commands; aya 0.14 has no public API for them.
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use super::bpf_sys::{BPF_BTF_GET_FD_BY_ID, BPF_BTF_GET_NEXT_ID, BPF_OBJ_GET_INFO_BY_FD};

/// `union bpf_attr`, as large as any command here needs; unused bytes zero.
#[repr(C, align(8))]
struct Attr([u8; 64]);

impl Attr {
    fn new() -> Self {
        Attr([0; 64])
    }
    fn set_u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn set_u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u32_at(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded bpf_attr of the size passed; the
    // kernel reads and writes only within it (and the buffers it points to).
    unsafe { super::bpf_sys::bpf(cmd, attr) }
}

/// `struct bpf_btf_info`: the fields read here.
#[repr(C)]
#[derive(Default)]
struct BtfInfo {
    btf: u64,
    btf_size: u32,
    id: u32,
    name: u64,
    name_len: u32,
    kernel_btf: u32,
}

/// The BTF object of id `id`, opened; `None` when it was freed meanwhile.
fn open_by_id(id: u32) -> io::Result<Option<OwnedFd>> {
    let mut attr = Attr::new();
    attr.set_u32(0, id);
    match bpf(BPF_BTF_GET_FD_BY_ID, &mut attr) {
        // SAFETY: the command returned a new descriptor we now own.
        Ok(fd) => Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a BTF object: fills `info` and the buffers it
/// points to.
fn get_info(fd: &OwnedFd, info: &mut BtfInfo) -> io::Result<()> {
    let mut attr = Attr::new();
    attr.set_u32(0, fd.as_raw_fd() as u32)
        .set_u32(4, std::mem::size_of::<BtfInfo>() as u32)
        .set_u64(8, info as *mut BtfInfo as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(|_| ())
}

/// `struct bpf_prog_info` up to and past `recursion_misses` (5.12+; an
/// older kernel fills less and leaves it zero). Offsets from the uapi
/// header, which has not moved a field since it was written.
const PROG_INFO_LEN: usize = 232;
const PROG_INFO_RECURSION_MISSES: usize = 208;

/// How many times the kernel skipped program `fd` because it was already
/// running on that CPU (a trampoline or kprobe entered from inside another
/// BPF program, or preempted under it): each one is a record never written.
pub fn prog_recursion_misses(fd: BorrowedFd<'_>) -> io::Result<u64> {
    #[repr(C, align(8))]
    struct ProgInfo([u8; PROG_INFO_LEN]);
    let mut info = ProgInfo([0; PROG_INFO_LEN]);
    let mut attr = Attr::new();
    attr.set_u32(0, fd.as_raw_fd() as u32)
        .set_u32(4, PROG_INFO_LEN as u32)
        .set_u64(8, info.0.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let at = PROG_INFO_RECURSION_MISSES;
    Ok(u64::from_ne_bytes(
        info.0[at..at + 8].try_into().expect("8 bytes"),
    ))
}

/// A BTF object's name ("vmlinux", a module's, "" for a program's), and
/// whether it is the kernel's own.
fn name_of(fd: &OwnedFd) -> io::Result<(String, bool)> {
    let mut name = [0u8; 64];
    let mut info = BtfInfo {
        name: name.as_mut_ptr() as u64,
        name_len: name.len() as u32,
        ..BtfInfo::default()
    };
    get_info(fd, &mut info)?;
    let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Ok((
        String::from_utf8_lossy(&name[..len]).into_owned(),
        info.kernel_btf != 0,
    ))
}

/// The name of the kernel BTF object of id `id` ("vmlinux" or a module's),
/// as `/sys/kernel/btf/` names it.
pub fn kernel_btf_name(id: u32) -> io::Result<Option<String>> {
    let Some(fd) = open_by_id(id)? else {
        return Ok(None);
    };
    let (name, kernel) = name_of(&fd)?;
    Ok(kernel.then_some(name))
}

/// A file descriptor for the BTF of kernel module `module` (`ext4`, `xfs`).
pub fn module_btf_fd(module: &str) -> io::Result<OwnedFd> {
    let mut id = 0u32;
    loop {
        let mut attr = Attr::new();
        attr.set_u32(0, id);
        match bpf(BPF_BTF_GET_NEXT_ID, &mut attr) {
            Ok(_) => id = attr.u32_at(4),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the kernel has no BTF object for module {module}"),
                ))
            }
            Err(e) => return Err(e),
        }
        // Freed between the two calls (a program's BTF): go on.
        let Some(fd) = open_by_id(id)? else {
            continue;
        };
        let (name, kernel) = name_of(&fd)?;
        if kernel && name == module {
            return Ok(fd);
        }
    }
}

/// The raw BTF of kernel object `name` ("vmlinux" or a module's), in one
/// copy: sysfs hands `/sys/kernel/btf/vmlinux` out a page per read(2), some
/// 1,400 system calls for its 5.5 MB (a third of the BTF start-up work
/// under emulation).
pub fn kernel_btf_bytes(name: &str) -> io::Result<Vec<u8>> {
    let fd = module_btf_fd(name)?;
    let info_of = |buf: &mut [u8]| -> io::Result<u32> {
        let mut info = BtfInfo {
            btf: if buf.is_empty() {
                0
            } else {
                buf.as_mut_ptr() as u64
            },
            btf_size: buf.len() as u32,
            ..BtfInfo::default()
        };
        get_info(&fd, &mut info)?;
        Ok(info.btf_size)
    };
    let size = info_of(&mut [])? as usize;
    let mut buf = vec![0u8; size];
    let copied = info_of(&mut buf)? as usize;
    if copied != size {
        return Err(io::Error::other(format!(
            "BTF of {name} changed size while read ({size} then {copied} bytes)"
        )));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmlinux_btf_is_found_and_a_missing_module_is_named() {
        crate::load::privs::check_privileges()
            .expect("this test needs root (BPF_BTF_GET_NEXT_ID): run the tests as root");
        // vmlinux's own BTF object is named "vmlinux" and is a kernel BTF.
        assert!(module_btf_fd("vmlinux").is_ok());
        // vmlinux's BTF is the first object the kernel creates.
        assert_eq!(
            kernel_btf_name(1).expect("id 1").as_deref(),
            Some("vmlinux")
        );
        // The same bytes sysfs gives, in one copy.
        let ours = kernel_btf_bytes("vmlinux").expect("vmlinux BTF");
        let sysfs = std::fs::read("/sys/kernel/btf/vmlinux").expect("sysfs BTF");
        assert!(ours == sysfs, "{} vs {} bytes", ours.len(), sysfs.len());
        let e = module_btf_fd("no_such_module_xyz").expect_err("absent");
        assert!(e.to_string().contains("no_such_module_xyz"), "{e}");
    }
}
