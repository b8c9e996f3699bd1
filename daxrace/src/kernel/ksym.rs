//! Kernel symbol lookups without reading `/proc/kallsyms`.
//!
//! Listing kallsyms makes the kernel format some 200,000 lines: 300 ms of a
//! one-second start-up under emulation, for the dozen names daxrace needs. A
//! `BPF_PROG_TYPE_SYSCALL` program (5.16+) asks the kernel directly: it runs
//! through `BPF_PROG_TEST_RUN` and calls `bpf_kallsyms_lookup_name` for a name,
//! or `bpf_probe_read_kernel` for 64 bytes of kernel memory (to tell a
//! tail-call wrapper by its code). The program is a few hand-assembled
//! instructions, loaded once.
use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
};

use super::{
    bpf_sys::{self, BPF_PROG_LOAD},
    btf::Btf,
    facts,
    kallsyms::{Kallsyms, KernelSymbol},
};
use crate::plan;

const BPF_PROG_TYPE_SYSCALL: u32 = 31;
const BPF_F_SLEEPABLE: u32 = 1 << 4;
const BPF_FUNC_PROBE_READ_KERNEL: i32 = 113;
const BPF_FUNC_KALLSYMS_LOOKUP_NAME: i32 = 179;

/// The longest name looked up (the helper wants it NUL-terminated).
pub const NAME_MAX: usize = 63;
/// Bytes one memory read returns.
pub const READ_BYTES: usize = 64;

/// The program's context, shared with the kernel by `BPF_PROG_TEST_RUN`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Ctx {
    /// 0: look `buf` up as a name; 1: read `READ_BYTES` at `addr` into `buf`.
    op: u64,
    /// The address found, or the address to read.
    addr: u64,
    buf: [u8; READ_BYTES],
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const ADD64_IMM: u8 = 0x07;
const LDX_DW: u8 = 0x79;
const STX_DW: u8 = 0x7b;
const ST_DW: u8 = 0x7a;
const JEQ_IMM: u8 = 0x15;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R6: u8 = 6;
const FP: u8 = 10;

/// Offsets in [`Ctx`].
const CTX_ADDR: i16 = 8;
const CTX_BUF: i16 = 16;
/// The 64-byte stack buffer and the lookup's result slot.
const STACK_BUF: i16 = -64;
const STACK_RES: i16 = -72;

fn program() -> Vec<Insn> {
    let words = (READ_BYTES / 8) as i16;
    let copy = |from: u8, from_off: i16, to: u8, to_off: i16| {
        (0..words).flat_map(move |i| {
            [
                insn(LDX_DW, R1, from, from_off + 8 * i, 0),
                insn(STX_DW, to, R1, to_off + 8 * i, 0),
            ]
        })
    };
    let mut lookup = Vec::new();
    // The helper reads the name from memory it can size: the stack.
    lookup.extend(copy(R6, CTX_BUF, FP, STACK_BUF));
    lookup.extend([
        insn(ST_DW, FP, 0, STACK_RES, 0),
        insn(MOV64_REG, R1, FP, 0, 0),
        insn(ADD64_IMM, R1, 0, 0, STACK_BUF as i32),
        insn(MOV64_IMM, R2, 0, 0, READ_BYTES as i32),
        insn(MOV64_IMM, R3, 0, 0, 0),
        insn(MOV64_REG, R4, FP, 0, 0),
        insn(ADD64_IMM, R4, 0, 0, STACK_RES as i32),
        insn(CALL, 0, 0, 0, BPF_FUNC_KALLSYMS_LOOKUP_NAME),
        insn(LDX_DW, R1, FP, STACK_RES, 0),
        insn(STX_DW, R6, R1, CTX_ADDR, 0),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    let mut read = vec![
        insn(MOV64_REG, R1, FP, 0, 0),
        insn(ADD64_IMM, R1, 0, 0, STACK_BUF as i32),
        insn(MOV64_IMM, R2, 0, 0, READ_BYTES as i32),
        insn(LDX_DW, R3, R6, CTX_ADDR, 0),
        insn(CALL, 0, 0, 0, BPF_FUNC_PROBE_READ_KERNEL),
    ];
    read.extend(copy(FP, STACK_BUF, R6, CTX_BUF));
    read.push(insn(EXIT, 0, 0, 0, 0));
    let mut p = vec![
        insn(MOV64_REG, R6, R1, 0, 0),
        insn(LDX_DW, R1, R6, 0, 0),
        insn(JEQ_IMM, R1, 0, lookup.len() as i16, 1),
    ];
    p.extend(lookup);
    p.extend(read);
    p
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zeroed bpf_attr of the size passed; the kernel
    // reads and writes only within it and the buffers it points to, which
    // outlive the call.
    unsafe { bpf_sys::bpf(cmd, attr) }
}

/// The loaded lookup program.
pub struct SymbolLookup {
    prog: OwnedFd,
}

impl SymbolLookup {
    /// Loads the program; fails on kernels before 5.16, without
    /// CAP_BPF/CAP_SYS_ADMIN, or under lockdown.
    pub fn load() -> io::Result<Self> {
        let insns = program();
        let license = b"GPL\0";
        let mut attr = [0u64; 16];
        attr[0] = BPF_PROG_TYPE_SYSCALL as u64 | (insns.len() as u64) << 32;
        attr[1] = insns.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        // kern_version (low half) and prog_flags (high half) of word 5.
        attr[5] = (BPF_F_SLEEPABLE as u64) << 32;
        let fd = match bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => fd,
            Err(e) => {
                // Again with the verifier's log, to say why.
                let mut log = vec![0u8; 1 << 16];
                attr[3] = 1 | (log.len() as u64) << 32;
                attr[4] = log.as_mut_ptr() as u64;
                let _ = bpf(BPF_PROG_LOAD, &mut attr);
                let end = log.iter().position(|&c| c == 0).unwrap_or(0);
                let text = String::from_utf8_lossy(&log[..end]);
                let last = text.lines().rev().find(|l| !l.trim().is_empty());
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e}{}", last.map(|l| format!(": {l}")).unwrap_or_default()),
                ));
            }
        };
        // SAFETY: BPF_PROG_LOAD returned a new descriptor we now own.
        let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(SymbolLookup { prog })
    }

    fn run(&self, ctx: &mut Ctx) -> io::Result<i32> {
        use std::os::fd::AsFd;
        bpf_sys::prog_test_run(self.prog.as_fd(), ctx)
    }

    /// The address of kernel symbol `name` (vmlinux or a module), if any.
    pub fn address(&self, name: &str) -> io::Result<Option<u64>> {
        if name.len() > NAME_MAX || name.is_empty() {
            return Ok(None);
        }
        let mut ctx = Ctx {
            op: 0,
            addr: 0,
            buf: [0; READ_BYTES],
        };
        ctx.buf[..name.len()].copy_from_slice(name.as_bytes());
        match self.run(&mut ctx)? {
            0 => Ok(Some(ctx.addr)),
            r if r == -libc::ENOENT => Ok(None),
            r => Err(io::Error::from_raw_os_error(-r)),
        }
    }

    /// `READ_BYTES` of kernel memory at `addr`.
    pub fn read(&self, addr: u64) -> io::Result<[u8; READ_BYTES]> {
        let mut ctx = Ctx {
            op: 1,
            addr,
            buf: [0; READ_BYTES],
        };
        match self.run(&mut ctx)? {
            0 => Ok(ctx.buf),
            r => Err(io::Error::from_raw_os_error(-r)),
        }
    }
}

/// Clone names tried for a function not found under its own name: a lookup
/// cannot list `name.*` as a listing can.
pub const CLONE_SUFFIXES: &[&str] = &[".isra.0", ".constprop.0", ".part.0"];

fn symbol(name: &str, addr: u64, kind: char, module: Option<&str>) -> KernelSymbol {
    KernelSymbol {
        name: name.to_string(),
        addr,
        kind,
        module: module.map(str::to_string),
        size: None,
    }
}

/// The symbols the probe plan and the kernel facts need, asked one by one
/// where BTF does not already answer (a function in BTF has a symbol of
/// that name). `None` when a function that may be cloned was found under
/// none of the names tried: only a listing can tell then.
pub fn plan_symbols(l: &SymbolLookup, btf: &Btf) -> io::Result<Option<Kallsyms>> {
    let mut k = Kallsyms::default();
    for t in plan::function_targets() {
        let may_clone = !t.clone_flavours.is_empty();
        if btf.has_func(t.symbol) && !may_clone {
            k.insert(t.symbol, symbol(t.symbol, 0, 'T', None));
            continue;
        }
        if let Some(addr) = l.address(t.symbol)? {
            let module = t.module.filter(|_| !btf.has_func(t.symbol));
            k.insert(t.symbol, symbol(t.symbol, addr, 'T', module));
            continue;
        }
        if !may_clone {
            continue;
        }
        let mut found = false;
        for suffix in CLONE_SUFFIXES {
            let name = format!("{}{suffix}", t.symbol);
            if let Some(addr) = l.address(&name)? {
                k.insert(t.symbol, symbol(&name, addr, 't', None));
                found = true;
                break;
            }
        }
        if !found {
            return Ok(None);
        }
    }
    for (wrapper, callee) in plan::wrappers() {
        if k.get(wrapper).is_none() || k.get(callee).is_none() {
            continue;
        }
        if let (Some(w), Some(c)) = (l.address(wrapper)?, l.address(callee)?) {
            if reaches(&l.read(w)?, w, c) {
                k.insert_jump(wrapper, callee);
            }
        }
    }
    for name in facts::SYMBOLS {
        if k.get(name).is_none() && !plan::symbols().any(|s| s == *name) {
            if let Some(addr) = l.address(name)? {
                k.insert(name, symbol(name, addr, 'D', None));
            }
        }
    }
    Ok(Some(k))
}

/// Whether the x86-64 code at `at` (as read from there) jumps or calls to
/// `callee` directly (`jmp rel32` or `call rel32`): every call through such
/// a wrapper reaches the callee.
pub fn reaches(code: &[u8], at: u64, callee: u64) -> bool {
    code.windows(5).enumerate().any(|(i, w)| {
        (w[0] == 0xe9 || w[0] == 0xe8) && {
            let rel = i32::from_le_bytes([w[1], w[2], w[3], w[4]]) as i64;
            at.wrapping_add(i as u64 + 5).wrapping_add(rel as u64) == callee
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_jump_to_the_callee_is_seen() {
        // endbr64; nop5 (fentry); mov rdx, -1 (7 bytes); xor esi, esi; jmp rel32
        let at = 0xffff_ffff_8140_0100u64;
        let callee = 0xffff_ffff_8140_0000u64;
        let mut code = vec![0xf3, 0x0f, 0x1e, 0xfa, 0x0f, 0x1f, 0x44, 0x00, 0x00];
        code.extend([0x48, 0xc7, 0xc2, 0xff, 0xff, 0xff, 0xff, 0x31, 0xf6]);
        let next = at + code.len() as u64 + 5;
        code.push(0xe9);
        code.extend(((callee as i64 - next as i64) as i32).to_le_bytes());
        code.resize(READ_BYTES, 0xcc);
        assert!(reaches(&code, at, callee));
        assert!(!reaches(&code, at, callee + 16));
        assert!(!reaches(&[0xcc; READ_BYTES], at, callee));
    }

    #[test]
    fn looks_up_the_running_kernels_symbols() {
        crate::load::privs::check_privileges()
            .expect("this test needs root (it loads a BPF program): run the tests as root");
        // Every kernel these tests run on (5.16+, no lockdown) takes the
        // program; a refusal is a defect, not a reason to skip.
        let l = SymbolLookup::load()
            .unwrap_or_else(|e| panic!("the symbol lookup program was refused: {e}"));
        // The same addresses /proc/kallsyms lists.
        let listed = crate::kernel::kallsyms::Kallsyms::read(&["_stext", "wake_up_var"])
            .expect("kallsyms readable as root");
        for name in ["_stext", "wake_up_var"] {
            let want = listed.get(name).map(|s| s.addr);
            assert_eq!(l.address(name).expect("lookup runs"), want, "{name}");
        }
        assert_eq!(l.address("no_such_symbol_here_xyz").expect("runs"), None);
        assert_eq!(l.address(&"x".repeat(NAME_MAX + 1)).expect("runs"), None);
        // Kernel text reads back as it is: not all zeroes.
        let at = listed.get("wake_up_var").expect("listed").addr;
        let code = l.read(at).expect("reads kernel text");
        assert!(code.iter().any(|&b| b != 0));
        assert!(l.read(0).is_err(), "address 0 is not readable");
    }
}
