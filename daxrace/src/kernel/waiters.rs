//! Tasks already asleep on a wait variable (`wait_var_event()`), found by
//! reading the kernel's hashed wait queues, and the DAX page such a wait
//! is on: what `daxrace doctor` needs to explain a hang that began before
//! daxrace did.
//!
//! `wait_var_event(var, cond)` puts a `struct wait_bit_queue_entry` on the
//! sleeping task's stack, with `key.flags = var`, `wq_entry.private = task`
//! and `wq_entry.func = var_wake_function`, and queues it on
//! `bit_wait_table[hash_ptr(var, 8)]` (the plan's [`WAIT_TABLE`]). The walk
//! reads those 256 queues and their entries from kernel memory through the
//! symbol-lookup program's read (`bpf_probe_read_kernel`, which cannot
//! fault): an entry freed mid-walk reads as garbage, never as a crash, and
//! each queue's walk is bounded. A task found here is then checked against
//! its own kernel stack, and again after a delay, by the caller.
//!
//! [`WAIT_TABLE`]: daxrace_plan::WAIT_TABLE
use std::io;

use serde::Serialize;

use super::{btf::Btf, ksym::SymbolLookup};

/// Reads kernel memory (a trait so that the walk can be tested on a fake).
pub trait KernelMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl KernelMemory for SymbolLookup {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let step = super::ksym::READ_BYTES;
        for (i, chunk) in buf.chunks_mut(step).enumerate() {
            let got = SymbolLookup::read(self, addr + (i * step) as u64)?;
            chunk.copy_from_slice(&got[..chunk.len()]);
        }
        Ok(())
    }
}

fn u64_at(b: &[u8], off: u32) -> u64 {
    let o = off as usize;
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn read_u64(mem: &impl KernelMemory, addr: u64) -> io::Result<u64> {
    let mut b = [0u8; 8];
    mem.read(addr, &mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_u32(mem: &impl KernelMemory, addr: u64) -> io::Result<u32> {
    let mut b = [0u8; 4];
    mem.read(addr, &mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// A NUL-terminated string of at most `max` bytes.
fn read_str(mem: &impl KernelMemory, addr: u64, max: usize) -> io::Result<String> {
    let mut b = vec![0u8; max];
    mem.read(addr, &mut b)?;
    let end = b.iter().position(|&c| c == 0).unwrap_or(max);
    Ok(String::from_utf8_lossy(&b[..end]).into_owned())
}

/// Where the fields the walk reads sit, from BTF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitLayout {
    /// `sizeof(wait_queue_head_t)`: the table's stride.
    pub head_size: u32,
    /// `wait_queue_head.head` (the list).
    pub head_list: u32,
    /// `wait_bit_queue_entry.key` + `wait_bit_key.flags`: the variable.
    pub wbq_var: u32,
    /// `wait_bit_queue_entry.wq_entry`.
    pub wbq_wq_entry: u32,
    /// In `wait_queue_entry`: `private` (the task), `func`, `entry` (the list node).
    pub wqe_private: u32,
    pub wqe_func: u32,
    pub wqe_entry: u32,
    /// In `task_struct`.
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    /// `task_struct.sched_info.last_arrival` (CONFIG_SCHED_INFO): when the
    /// task last got a CPU, on the scheduler clock.
    pub task_last_arrival: Option<u32>,
    /// `super_block.s_id` (the device name, e.g. `pmem0`) and `s_type`;
    /// `file_system_type.name`.
    pub sb_id: u32,
    pub sb_type: u32,
    pub fstype_name: u32,
}

impl WaitLayout {
    /// The layout from the kernel's BTF; the first field it lacks is the error.
    pub fn from_btf(btf: &Btf) -> Result<WaitLayout, String> {
        let off = |st: &str, m: &str| {
            btf.member_offset(st, m)
                .ok_or_else(|| format!("struct {st}.{m}"))
        };
        let size = |st: &str| btf.struct_size(st).ok_or_else(|| format!("struct {st}"));
        let wqe_entry = off("wait_queue_entry", "entry")?;
        Ok(WaitLayout {
            head_size: size("wait_queue_head")?,
            head_list: off("wait_queue_head", "head")?,
            wbq_var: off("wait_bit_queue_entry", "key")? + off("wait_bit_key", "flags")?,
            wbq_wq_entry: off("wait_bit_queue_entry", "wq_entry")?,
            wqe_private: off("wait_queue_entry", "private")?,
            wqe_func: off("wait_queue_entry", "func")?,
            wqe_entry,
            task_pid: off("task_struct", "pid")?,
            task_tgid: off("task_struct", "tgid")?,
            task_comm: off("task_struct", "comm")?,
            task_last_arrival: btf
                .member_offset("task_struct", "sched_info")
                .zip(btf.member_offset("sched_info", "last_arrival"))
                .map(|(a, b)| a + b),
            sb_id: off("super_block", "s_id")?,
            sb_type: off("super_block", "s_type")?,
            fstype_name: off("file_system_type", "name")?,
        })
    }

    /// Bytes of an entry to read: up to the end of its list node.
    fn entry_len(&self) -> u32 {
        (self.wbq_var + 8).max(self.wbq_wq_entry + self.wqe_entry + 16)
    }
}

/// Entries followed per queue at most: a queue holds the waiters whose
/// variables hash there, a handful; a list changing under the walk must
/// not keep it going.
pub const MAX_ENTRIES_PER_QUEUE: usize = 256;

/// One entry of a wait-variable queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VarWaiter {
    /// The `wait_bit_queue_entry` (on the sleeping task's stack).
    pub entry: u64,
    /// The variable waited on (`key.flags`).
    pub var: u64,
    /// The sleeping task's `task_struct`.
    pub task: u64,
}

/// Every `var_wake_function` entry of the table at `table` (of `queues`
/// heads).
pub fn var_waiters(
    mem: &impl KernelMemory,
    l: &WaitLayout,
    table: u64,
    queues: u32,
    wake: u64,
) -> io::Result<Vec<VarWaiter>> {
    let mut heads = vec![0u8; (queues * l.head_size) as usize];
    mem.read(table, &mut heads)?;
    let mut out = Vec::new();
    let mut entry = vec![0u8; l.entry_len() as usize];
    for q in 0..queues {
        let list = table + u64::from(q * l.head_size + l.head_list);
        let mut node = u64_at(&heads, q * l.head_size + l.head_list);
        let mut steps = 0;
        while node != list && node != 0 && steps < MAX_ENTRIES_PER_QUEUE {
            steps += 1;
            let at = node.wrapping_sub(u64::from(l.wqe_entry + l.wbq_wq_entry));
            if let Err(e) = mem.read(at, &mut entry) {
                // Freed under the walk: the rest of this queue is unknown.
                log::debug!("wait queue {q}: entry at {at:#x} unreadable ({e})");
                break;
            }
            let wqe = l.wbq_wq_entry;
            if u64_at(&entry, wqe + l.wqe_func) == wake {
                out.push(VarWaiter {
                    entry: at,
                    var: u64_at(&entry, l.wbq_var),
                    task: u64_at(&entry, wqe + l.wqe_private),
                });
            }
            node = u64_at(&entry, wqe + l.wqe_entry);
        }
    }
    Ok(out)
}

/// The kernel image's addresses (`-2 GiB`), where the table lives.
const KERNEL_IMAGE: u64 = 0xffff_ffff_8000_0000;

/// Where the table may be, from the code of the function that indexes it
/// (x86-64: an absolute `imm32`/`disp32`, sign-extended, or a RIP-relative
/// displacement): every 32-bit field read both ways, kept when it lands in
/// the kernel image on a cache line (the table is `__cacheline_aligned`).
pub fn table_candidates(code: &[u8], at: u64) -> Vec<u64> {
    let mut v = Vec::new();
    for i in 0..code.len().saturating_sub(3) {
        let d = i64::from(i32::from_le_bytes(
            code[i..i + 4].try_into().expect("4 bytes"),
        ));
        let abs = d as u64;
        let rel = at.wrapping_add(i as u64 + 4).wrapping_add(d as u64);
        for c in [abs, rel] {
            if c >= KERNEL_IMAGE && c % 64 == 0 && !v.contains(&c) {
                v.push(c);
            }
        }
    }
    v
}

/// Whether `table` reads as `queues` wait queue heads: every list empty
/// (both links at itself) or linked into kernel memory, and most empty.
pub fn looks_like_table(mem: &impl KernelMemory, l: &WaitLayout, table: u64, queues: u32) -> bool {
    let kernel = |p: u64| p >= 0xffff_8000_0000_0000;
    let head = |b: &[u8], q: u32| {
        let list = table + u64::from(q * l.head_size + l.head_list);
        let next = u64_at(b, q * l.head_size + l.head_list);
        let prev = u64_at(b, q * l.head_size + l.head_list + 8);
        (list, next, prev)
    };
    // One queue first: most candidates fail here, for one read.
    let mut first = vec![0u8; l.head_size as usize];
    if mem.read(table, &mut first).is_err() {
        return false;
    }
    let (list, next, prev) = head(&first, 0);
    if !(next == list && prev == list || kernel(next) && kernel(prev)) {
        return false;
    }
    let mut b = vec![0u8; (queues * l.head_size) as usize];
    if mem.read(table, &mut b).is_err() {
        return false;
    }
    let mut empty = 0;
    for q in 0..queues {
        let (list, next, prev) = head(&b, q);
        if next == list && prev == list {
            empty += 1;
        } else if !(kernel(next) && kernel(prev)) || next == 0 {
            return false;
        }
    }
    empty * 2 > queues
}

/// What a `task_struct` says about its task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskInfo {
    /// Thread id (`task->pid`) and process id (`task->tgid`), as the initial
    /// pid namespace numbers them.
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    /// Scheduler-clock ns at which it last got a CPU.
    #[serde(skip)]
    pub last_arrival_ns: Option<u64>,
}

pub fn read_task(mem: &impl KernelMemory, l: &WaitLayout, task: u64) -> io::Result<TaskInfo> {
    let mut b = [0u8; 16];
    mem.read(task + u64::from(l.task_comm), &mut b)?;
    let end = b.iter().position(|&c| c == 0).unwrap_or(16);
    Ok(TaskInfo {
        tid: read_u32(mem, task + u64::from(l.task_pid))?,
        pid: read_u32(mem, task + u64::from(l.task_tgid))?,
        comm: String::from_utf8_lossy(&b[..end]).into_owned(),
        last_arrival_ns: match l.task_last_arrival {
            Some(off) => Some(read_u64(mem, task + u64::from(off))?),
            None => None,
        },
    })
}

/// CLOCK_MONOTONIC in ns. The scheduler's clock (`sched_clock_cpu()`, which
/// `sched_info.last_arrival` reads) is kept in step with it by design (its
/// offset is set from the monotonic clock when it stabilises), so the
/// difference is how long a task has been off the CPU.
pub fn clock_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where a DAX page's facts sit (from the kernel facts and BTF).
#[derive(Clone, Copy, Debug)]
pub struct PageLayout {
    pub refcount: u32,
    pub mapping: u32,
    pub index: u32,
    pub struct_size: u32,
    /// The value of `vmemmap_base` (where `struct page` 0 is).
    pub vmemmap_base: u64,
    pub mapping_host: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
}

/// A page, its count and the file it belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PageState {
    /// Address of its `struct page` (or folio).
    pub page: u64,
    pub pfn: u64,
    pub refcount: i32,
    pub mapping: u64,
    pub index: u64,
    pub ino: u64,
    /// `s_dev` in the kernel's encoding (major << 20 | minor).
    pub dev: u32,
    /// The filesystem's device name (`s_id`, e.g. `pmem0`) and type (`ext4`).
    pub device: String,
    pub fs: String,
}

/// Only the refcount (for the confirming second look).
pub fn read_refcount(mem: &impl KernelMemory, p: &PageLayout, page: u64) -> io::Result<i32> {
    Ok(read_u32(mem, page + u64::from(p.refcount))? as i32)
}

pub fn read_page(
    mem: &impl KernelMemory,
    p: &PageLayout,
    l: &WaitLayout,
    page: u64,
) -> io::Result<PageState> {
    let refcount = read_refcount(mem, p, page)?;
    // The low bits of page->mapping are flags (anon, movable, DAX CoW).
    let mapping = read_u64(mem, page + u64::from(p.mapping))? & !3;
    let index = read_u64(mem, page + u64::from(p.index))?;
    let mut s = PageState {
        page,
        pfn: page.wrapping_sub(p.vmemmap_base) / u64::from(p.struct_size.max(1)),
        refcount,
        mapping,
        index,
        ino: 0,
        dev: 0,
        device: String::new(),
        fs: String::new(),
    };
    if mapping == 0 {
        return Ok(s);
    }
    let inode = read_u64(mem, mapping + u64::from(p.mapping_host))?;
    if inode == 0 {
        return Ok(s);
    }
    s.ino = read_u64(mem, inode + u64::from(p.inode_ino))?;
    let sb = read_u64(mem, inode + u64::from(p.inode_sb))?;
    if sb == 0 {
        return Ok(s);
    }
    s.dev = read_u32(mem, sb + u64::from(p.sb_dev))?;
    s.device = read_str(mem, sb + u64::from(l.sb_id), 32)?;
    let fstype = read_u64(mem, sb + u64::from(l.sb_type))?;
    if fstype != 0 {
        let name = read_u64(mem, fstype + u64::from(l.fstype_name))?;
        if name != 0 {
            s.fs = read_str(mem, name, 16)?;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Kernel memory as a few regions.
    #[derive(Default)]
    struct Fake(BTreeMap<u64, Vec<u8>>);

    impl Fake {
        fn put(&mut self, at: u64, bytes: Vec<u8>) {
            self.0.insert(at, bytes);
        }
        fn put_u64(&mut self, at: u64, v: u64) {
            self.put(at, v.to_le_bytes().to_vec());
        }
    }

    impl KernelMemory for Fake {
        fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
            for (i, b) in buf.iter_mut().enumerate() {
                let a = addr + i as u64;
                let (start, bytes) = self
                    .0
                    .range(..=a)
                    .next_back()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
                *b = *bytes
                    .get((a - start) as usize)
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))?;
            }
            Ok(())
        }
    }

    /// x86_64 6.1 offsets.
    const L: WaitLayout = WaitLayout {
        head_size: 24,
        head_list: 8,
        wbq_var: 0,
        wbq_wq_entry: 24,
        wqe_private: 8,
        wqe_func: 16,
        wqe_entry: 24,
        task_pid: 1000,
        task_tgid: 1004,
        task_comm: 1500,
        task_last_arrival: Some(800),
        sb_id: 0x100,
        sb_type: 0x28,
        fstype_name: 0,
    };

    fn entry(var: u64, task: u64, func: u64, next: u64, prev: u64) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[0..8].copy_from_slice(&var.to_le_bytes());
        e[24 + 8..24 + 16].copy_from_slice(&task.to_le_bytes());
        e[24 + 16..24 + 24].copy_from_slice(&func.to_le_bytes());
        e[24 + 24..24 + 32].copy_from_slice(&next.to_le_bytes());
        e[24 + 32..24 + 40].copy_from_slice(&prev.to_le_bytes());
        e
    }

    /// `n` empty queue heads at `table`: each list points at itself.
    fn empty_heads(table: u64, n: u64) -> Vec<u8> {
        let mut heads = vec![0u8; (n * 24) as usize];
        for q in 0..n {
            let list = table + q * 24 + 8;
            heads[(q * 24 + 8) as usize..(q * 24 + 16) as usize]
                .copy_from_slice(&list.to_le_bytes());
            heads[(q * 24 + 16) as usize..(q * 24 + 24) as usize]
                .copy_from_slice(&list.to_le_bytes());
        }
        heads
    }

    #[test]
    fn the_walk_finds_var_waiters_and_skips_other_entries() {
        let table = 0xffff_ffff_8200_0000u64;
        let wake = 0xffff_ffff_8100_1000u64;
        let mut heads = empty_heads(table, 4);
        // Queue 2: a bit waiter (another func), then a var waiter.
        let list2 = table + 2 * 24 + 8;
        let (e1, e2) = (0xffff_c900_0001_0000u64, 0xffff_c900_0002_0000u64);
        heads[56..64].copy_from_slice(&(e1 + 48).to_le_bytes());
        let mut m = Fake::default();
        m.put(table, heads);
        m.put(e1, entry(0x1234, 0xaaaa, wake + 64, e2 + 48, list2));
        m.put(
            e2,
            entry(0xffff_ea00_0120_0034, 0xbbbb, wake, list2, e1 + 48),
        );
        let w = var_waiters(&m, &L, table, 4, wake).expect("walks");
        assert_eq!(
            w,
            vec![VarWaiter {
                entry: e2,
                var: 0xffff_ea00_0120_0034,
                task: 0xbbbb
            }]
        );
    }

    #[test]
    fn a_freed_entry_or_a_looping_list_ends_that_queue_only() {
        let table = 0x10_0000u64;
        let wake = 0x9000u64;
        let mut heads = vec![0u8; 2 * 24];
        let list1 = table + 24 + 8;
        // Queue 0 points at unreadable memory; queue 1 at an entry whose
        // next is itself.
        heads[8..16].copy_from_slice(&0xdead_0000u64.to_le_bytes());
        let e = 0x20_0000u64;
        heads[32..40].copy_from_slice(&(e + 48).to_le_bytes());
        let mut m = Fake::default();
        m.put(table, heads);
        m.put(e, entry(0x5000, 0x6000, wake, e + 48, list1));
        let w = var_waiters(&m, &L, table, 2, wake).expect("walks");
        assert_eq!(w.len(), MAX_ENTRIES_PER_QUEUE);
        assert!(w.iter().all(|x| x.task == 0x6000));
    }

    #[test]
    fn the_table_is_found_in_the_code_that_indexes_it() {
        // 6.1's __var_waitqueue: endbr64; nop5; movabs rax, GOLDEN_RATIO_64;
        // imul rdi, rax; shr rdi, 0x38; lea rax, [rdi+rdi*2];
        // lea rax, [rax*8 + bit_wait_table]; ret
        let table = 0xffff_ffff_82a0_6a00u64;
        let mut code = vec![0xf3, 0x0f, 0x1e, 0xfa, 0x0f, 0x1f, 0x44, 0x00, 0x00];
        code.extend([0x48, 0xb8, 0xeb, 0x83, 0xb5, 0x80, 0x46, 0x86, 0xc8, 0x61]);
        code.extend([0x48, 0x0f, 0xaf, 0xf8, 0x48, 0xc1, 0xef, 0x38]);
        code.extend([0x48, 0x8d, 0x04, 0x7f, 0x48, 0x8d, 0x04, 0xc5]);
        code.extend((table as u32).to_le_bytes());
        code.push(0xc3);
        let at = 0xffff_ffff_8110_0000u64;
        let c = table_candidates(&code, at);
        assert!(c.contains(&table), "{c:x?}");
        // Only the real table reads as one.
        let heads = empty_heads(table, 4);
        let mut m = Fake::default();
        m.put(table, heads);
        m.put(at, code.clone());
        let found: Vec<u64> = c
            .into_iter()
            .filter(|&t| looks_like_table(&m, &L, t, 4))
            .collect();
        assert_eq!(found, vec![table]);
    }

    #[test]
    fn a_page_reads_back_with_its_file() {
        let p = PageLayout {
            refcount: 52,
            mapping: 24,
            index: 32,
            struct_size: 64,
            vmemmap_base: 0xffff_ea00_0000_0000,
            mapping_host: 0,
            inode_ino: 64,
            inode_sb: 40,
            sb_dev: 16,
        };
        let page = 0xffff_ea00_0000_0000u64 + 0x48100 * 64;
        let (mapping, inode, sb, fstype, name) =
            (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64, 0x5000u64);
        let mut m = Fake::default();
        let mut pg = vec![0u8; 64];
        pg[52..56].copy_from_slice(&1u32.to_le_bytes());
        pg[24..32].copy_from_slice(&(mapping | 1).to_le_bytes());
        m.put(page, pg);
        m.put_u64(mapping, inode);
        let mut ino = vec![0u8; 72];
        ino[40..48].copy_from_slice(&sb.to_le_bytes());
        ino[64..72].copy_from_slice(&12u64.to_le_bytes());
        m.put(inode, ino);
        let mut s = vec![0u8; 0x120];
        s[16..20].copy_from_slice(&(259u32 << 20).to_le_bytes());
        s[0x28..0x30].copy_from_slice(&fstype.to_le_bytes());
        s[0x100..0x106].copy_from_slice(b"pmem0\0");
        m.put(sb, s);
        m.put_u64(fstype, name);
        let mut n = b"ext4".to_vec();
        n.resize(16, 0);
        m.put(name, n);
        let st = read_page(&m, &p, &L, page).expect("reads");
        assert_eq!(st.pfn, 0x48100);
        assert_eq!(st.refcount, 1);
        assert_eq!(st.mapping, mapping);
        assert_eq!((st.ino, st.dev), (12, 259 << 20));
        assert_eq!((st.device.as_str(), st.fs.as_str()), ("pmem0", "ext4"));
    }
}
