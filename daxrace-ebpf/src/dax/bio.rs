//! The release path that bypasses the devmap put: `__bio_release_pages`
//! (Debian 6.1 releases direct-I/O pages there without the wake-up a
//! break-layouts waiter needs). After the release, every bvec and every
//! page of the bio is walked with `bpf_loop` and the watched ones are
//! reported with their refcount.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_loop,
    macros::{fexit, kprobe, kretprobe, map},
    maps::{Array, PerCpuArray},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use daxrace_common::{bvec_pages, dax, slots::TASK_SLOTS, Counter, HookId, RecordKind};

use super::{
    state::{fill_page, pfn_of, task_slot, tid, LoopCallback},
    watch::{block_maybe_watched, gate_open, watched},
};
use crate::emit::{config, count, count_add, new_record, read_at, submit};

/// The kprobe flavour of the bio release hook: the bio, from entry to return.
#[derive(Clone, Copy)]
#[repr(C)]
struct BioSlot {
    tid: u32,
    _pad: u32,
    bio: u64,
}

#[map]
static BIO_STASH: Array<BioSlot> = Array::with_max_entries(TASK_SLOTS, 0);

/// Watched pages one release reports; more in one bio are counted as
/// `BioTruncated` (lost). A busy scan watches one page per call, so a bio
/// holds few.
const MAX_RELEASED_WATCHED: usize = 16;

/// Reports one watched page of a released bio. Called after the walk, not
/// inside it: the walk's callbacks stay a few instructions long, which is
/// what the 6.8+ verifier (it iterates callbacks to a fixed point) needs to
/// load them quickly.
#[inline(never)]
fn report_released(page: u64) {
    let cfg = config();
    let mut r = new_record(RecordKind::PageReleased, HookId::BioRelease);
    fill_page(&mut r, cfg, page);
    submit(&r);
}

/// What the walk found. In a per-CPU map rather than on the stack: values
/// read from map memory are unknown to the verifier, so the loop states
/// converge instead of forking on every count (a stack counter made the 7.x
/// verifier give up). The program cannot nest on one CPU (the kernel skips
/// a program's re-entry there), so one slot per CPU is enough.
#[derive(Clone, Copy)]
#[repr(C)]
struct Found {
    pages: [u64; MAX_RELEASED_WATCHED],
    n: u64,
    overflow: u64,
    /// Pages walked, counted once per bio.
    walked: u64,
}

#[map]
static RELEASE_FOUND: PerCpuArray<Found> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn found_push(page: u64) {
    let Some(f) = RELEASE_FOUND.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, only this program run uses it.
    let f = unsafe { &mut *f };
    let n = f.n as usize;
    if n < MAX_RELEASED_WATCHED {
        f.pages[n] = page;
        f.n += 1;
    } else {
        f.overflow += 1;
    }
}

/// What the bvec callback needs from the bio.
#[repr(C)]
struct BioWalk {
    vecs: u64,
    bvec_size: u64,
    psz: u64,
    /// The bvecs are in `BVEC_COPIES` (one read for the bio instead of
    /// three per bvec).
    copied: u64,
}

/// Bytes of bvecs copied in one read: `BIO_MAX_VECS` (256) bvecs of 16
/// bytes (64-bit), every bvec a bio whose pages the release path drops can
/// have. Longer lists are read field by field.
const BVEC_COPY: u64 = 4096;

/// The bvecs of the bio being released, copied in one read. Reading three
/// fields of each bvec apart took 48 reads for a 64 KiB direct I/O into a
/// DAX mapping (sixteen 1-page bvecs: DAX folios are not merged), about
/// 5 us of a 9.4 us run on 7.3 under emulation.
#[repr(C)]
struct BvecCopy {
    /// Twice `BVEC_COPY`: the read's length is masked to below that, which
    /// the 6.12 verifier can bound where it loses the `len <= BVEC_COPY`
    /// test; and slack for a masked offset plus 8.
    bytes: [u8; 2 * BVEC_COPY as usize + 16],
}

#[map]
static BVEC_COPIES: PerCpuArray<BvecCopy> = PerCpuArray::with_max_entries(1, 0);

/// Copies the first `n` bvecs at `vecs`; false when they do not fit or the
/// read fails (the walk then reads them field by field).
#[inline(always)]
fn copy_bvecs(vecs: u64, n: u32, bvec_size: u64) -> bool {
    let len = n as u64 * bvec_size;
    if vecs == 0 || len == 0 || len > BVEC_COPY {
        return false;
    }
    let Some(copy) = BVEC_COPIES.get_ptr_mut(0) else {
        return false;
    };
    // Read back through memory so that the compiler keeps the mask: having
    // proved `len <= BVEC_COPY` by a wrapping test the verifier cannot
    // follow, it would drop it, and the verifier then sees no bound.
    // SAFETY: a plain local.
    let len = unsafe { core::ptr::read_volatile(&len) } & (2 * BVEC_COPY - 1);
    // SAFETY: this CPU's slot (the program cannot nest on one CPU); the
    // helper writes `len` < 2 * BVEC_COPY bytes into it.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            (*copy).bytes.as_mut_ptr() as *mut c_void,
            len as u32,
            vecs as *const c_void,
        ) == 0
    }
}

/// A field of the copied bvecs, `at` bytes in. The offset is masked so that
/// the verifier can bound it; every real one is below the copied length.
#[inline(always)]
fn copied_field<T: Copy + Default>(at: u64) -> T {
    let Some(copy) = BVEC_COPIES.get_ptr_mut(0) else {
        return T::default();
    };
    // SAFETY: masked offset + size_of::<T>() (at most 8) is inside `bytes`.
    unsafe {
        core::ptr::read_unaligned(
            (*copy).bytes.as_ptr().add((at & (BVEC_COPY - 1)) as usize) as *const T
        )
    }
}

/// The pages of one multi-page bvec: `pages` pages from `first`, frame
/// numbers from `pfn`.
#[repr(C)]
struct BvecWalk {
    first: u64,
    pfn: u64,
    pages: u64,
    psz: u64,
}

/// A run of pages inside one 2 MiB block.
#[repr(C)]
struct PageRun {
    first: u64,
    psz: u64,
}

extern "C" fn page_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it below.
    let w = unsafe { &*(ctx as *const PageRun) };
    found_if_watched(w.first + i as u64 * w.psz);
    0
}

/// Block `i` of a multi-page bvec: its pages are looked at only where a
/// page of the block was ever watched (a 1 MiB bvec of a huge page then
/// costs one load, not 256).
extern "C" fn block_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it below.
    let w = unsafe { &*(ctx as *const BvecWalk) };
    let Some((lo, hi)) = dax::block_run(w.pfn, w.pages, i) else {
        return 0;
    };
    if !block_maybe_watched(lo) {
        return 0;
    }
    let mut run = PageRun {
        first: w.first + (lo - w.pfn) * w.psz,
        psz: w.psz,
    };
    // SAFETY: helper call with a callback and a pointer to our stack.
    unsafe {
        bpf_loop(
            (hi - lo) as u32,
            page_step as LoopCallback as *mut c_void,
            &mut run as *mut PageRun as *mut c_void,
            0,
        )
    };
    0
}

#[inline(always)]
fn found_if_watched(page: u64) {
    if watched(page) {
        found_push(page);
    }
}

extern "C" fn bvec_step(i: u32, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer given to it below.
    let w = unsafe { &*(ctx as *const BioWalk) };
    let cfg = config();
    let at = (i as u64) * w.bvec_size;
    let (off, len, bv_page) = if w.copied != 0 {
        (
            copied_field::<u32>(at + cfg.bvec_offset() as u64) as u64,
            copied_field::<u32>(at + cfg.bvec_len() as u64) as u64,
            copied_field::<u64>(at + cfg.bvec_page() as u64),
        )
    } else {
        let bv = w.vecs + at;
        (
            read_at::<u32>(bv, cfg.bvec_offset()) as u64,
            read_at::<u32>(bv, cfg.bvec_len()) as u64,
            read_at::<u64>(bv, cfg.bvec_page()),
        )
    };
    let (first_pg, npages) = bvec_pages(off, len);
    if npages == 0 {
        return 0;
    }
    let first = bv_page + first_pg * w.psz;
    if npages == 1 {
        // The usual bvec here: no inner walk (a `bpf_loop` per bvec).
        found_if_watched(first);
        add_walked(1);
        return 0;
    }
    let pfn = pfn_of(cfg, first);
    let blocks = dax::bvec_blocks(pfn, npages);
    let mut bw = BvecWalk {
        first,
        pfn,
        pages: npages,
        psz: w.psz,
    };
    // SAFETY: helper call with a callback and a pointer to our stack.
    unsafe {
        bpf_loop(
            blocks as u32,
            block_step as LoopCallback as *mut c_void,
            &mut bw as *mut BvecWalk as *mut c_void,
            0,
        )
    };
    add_walked(npages);
    0
}

#[inline(always)]
fn add_walked(n: u64) {
    if let Some(f) = RELEASE_FOUND.get_ptr_mut(0) {
        // SAFETY: this CPU's slot (see Found). Counted here, not in the
        // walk's stack context: a counter there never lets the verifier's
        // loop states converge.
        unsafe { (*f).walked += n };
    }
}

/// Reports the watched pages the walk found, from a loop callback: one
/// record path for the verifier to check, not one per page.
extern "C" fn released_report_step(i: u32, _ctx: *mut c_void) -> i64 {
    let Some(f) = RELEASE_FOUND.get_ptr(0) else {
        return 1;
    };
    // SAFETY: this CPU's slot, filled by the walk of this program run.
    let page = unsafe { (*f).pages[i as usize & (MAX_RELEASED_WATCHED - 1)] };
    report_released(page);
    0
}

/// After `__bio_release_pages(bio)` dropped its references: report the
/// watched pages of the bio with their refcount now. Every bvec and every
/// page is looked at (a bio the release path drops pages of has at most
/// `BIO_MAX_VECS` bvecs, a multi-page bvec up to 4 GiB): nothing is cut
/// short, so nothing but more watched pages than one run reports is lost.
///
/// Walked with `bpf_loop` (5.17+): its callbacks are verified once, where an
/// open-coded loop over bvecs and pages is verified per iteration and made
/// the 6.12 verifier give up (E2BIG after minutes under emulation).
#[inline(always)]
fn bio_released(bio: u64) -> u32 {
    if bio == 0 || !gate_open() {
        return 0;
    }
    let cfg = config();
    let vcnt = read_at::<u16>(bio, cfg.bio_vcnt()) as u32;
    let mut w = BioWalk {
        vecs: read_at::<u64>(bio, cfg.bio_io_vec()),
        bvec_size: cfg.bio_vec_size() as u64,
        psz: cfg.page_struct_size() as u64,
        copied: 0,
    };
    let Some(found) = RELEASE_FOUND.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot (see Found). Volatile: plain stores next to
    // each other become a memset call the verifier refuses.
    unsafe {
        core::ptr::write_volatile(&raw mut (*found).n, 0);
        core::ptr::write_volatile(&raw mut (*found).overflow, 0);
        core::ptr::write_volatile(&raw mut (*found).walked, 0);
    }
    w.copied = copy_bvecs(w.vecs, vcnt, w.bvec_size) as u64;
    // SAFETY: helper call with a callback and a pointer to our stack.
    unsafe {
        bpf_loop(
            vcnt,
            bvec_step as LoopCallback as *mut c_void,
            &mut w as *mut BioWalk as *mut c_void,
            0,
        )
    };
    // SAFETY: as above; copied out before any record is sent.
    let (n, walked, overflow) = unsafe { ((*found).n, (*found).walked, (*found).overflow) };
    count_add(Counter::PutWatched, n);
    count_add(Counter::PutUnwatched, walked.saturating_sub(n));
    count_add(Counter::BioTruncated, overflow);
    if n != 0 {
        // SAFETY: helper call with a callback and no context.
        unsafe {
            bpf_loop(
                n as u32,
                released_report_step as LoopCallback as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
    }
    0
}

#[fexit]
pub fn fx_bio_release(ctx: FExitContext) -> u32 {
    bio_released(ctx.arg::<u64>(0))
}

#[kprobe]
pub fn kp_bio_release(ctx: ProbeContext) -> u32 {
    let tid = tid();
    if let Some(st) = task_slot(&BIO_STASH, tid) {
        if st.tid != 0 && st.tid != tid && gate_open() {
            // Another task's bio between entry and return: its walk is
            // lost (counted only while a page may be watched).
            count(Counter::TaskSlotCollision);
        }
        st.tid = tid;
        st.bio = ctx.arg::<u64>(0).unwrap_or(0);
    }
    0
}

#[kretprobe]
pub fn kr_bio_release(_ctx: RetProbeContext) -> u32 {
    let tid = tid();
    let Some(st) = task_slot(&BIO_STASH, tid) else {
        return 0;
    };
    if st.tid != tid {
        return 0;
    }
    st.tid = 0;
    bio_released(st.bio)
}
