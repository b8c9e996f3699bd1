//! Kernel facts the programs need (struct offsets, the idle refcount, where
//! the page array starts), read from BTF and kernel symbols at start-up.
use daxrace_common::KernelConfig;
use serde::Serialize;

use super::{btf::Btf, kallsyms::Kallsyms};

/// The facts, and how each was obtained (for the trace header and `probes`).
#[derive(Clone, Debug, Serialize)]
pub struct KernelFacts {
    #[serde(skip)]
    pub config: KernelConfig,
    pub page_refcount_offset: u32,
    pub page_mapping_offset: u32,
    pub page_struct_size: u32,
    pub idle_refcount: u32,
    /// Where a waiter's variable sits in its page (`var - page`):
    /// `&page->_refcount` before 6.15, the page itself from 6.15.
    pub wait_var_offset: u32,
    /// What a FOLL_PIN adds to `_refcount` (GUP_PIN_COUNTING_BIAS), 0 where
    /// pins are plain references.
    pub pin_bias: u32,
    pub vmemmap_base_symbol: bool,
    /// vmlinux's BTF id of the `bpf_rdonly_cast` kfunc (6.2+): the hooks
    /// then read page refcounts with plain loads (`page_refcount` in the
    /// eBPF object), else with `bpf_probe_read_kernel`.
    pub rdonly_cast_id: Option<u32>,
    /// What the idle refcount was told from.
    pub idle_refcount_evidence: IdleRefcountEvidence,
    /// Things that were guessed rather than read; each is a warning to show.
    pub warnings: Vec<String>,
}

/// Reads one offset from BTF, or falls back with a warning.
fn offset(
    btf: Option<&Btf>,
    st: &str,
    member: &str,
    default: u32,
    warnings: &mut Vec<String>,
) -> u32 {
    offset_of_any(btf, st, &[member], default, warnings)
}

/// The offset of the first of `members` BTF has (a member renamed across
/// kernels), or the default with a warning.
fn offset_of_any(
    btf: Option<&Btf>,
    st: &str,
    members: &[&str],
    default: u32,
    warnings: &mut Vec<String>,
) -> u32 {
    match btf.and_then(|b| members.iter().find_map(|m| b.member_offset(st, m))) {
        Some(v) => v,
        None => {
            if btf.is_some() {
                warnings.push(format!(
                    "BTF has no struct {st}.{}: using the x86_64 default offset {default}",
                    members.join(" or .")
                ));
            }
            default
        }
    }
}

/// Kernel symbols the facts read (besides the probe plan's own).
pub const SYMBOLS: &[&str] = &[
    "vmemmap_base",
    "dax_break_layout",
    "__put_devmap_managed_folio_refs",
    "__put_devmap_managed_page_refs",
    "__put_devmap_managed_page",
    "put_devmap_managed_page",
    "dax_layout_busy_page_range",
    "dax_layout_busy_page",
];

/// The devmap put functions, newest first: a kernel before 6.15 drops a
/// DAX page's references through one of them, and a page there is idle at
/// refcount 1. The 6.15 series that made idle 0 ("fs/dax: properly refcount
/// fs dax pages") removed them and added `dax_break_layout`.
pub const DEVMAP_PUT_FUNCTIONS: &[&str] = &[
    "__put_devmap_managed_folio_refs",
    "__put_devmap_managed_page_refs",
    "__put_devmap_managed_page",
    "put_devmap_managed_page",
];

/// The two markers of the refcount model of DAX pages, which must agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IdleRefcountEvidence {
    /// `dax_break_layout` is present (6.15+: idle at 0). It decides.
    pub dax_break_layout: bool,
    /// The devmap put function present (before 6.15: idle at 1), if any.
    pub devmap_put: Option<String>,
    /// The kernel has DAX busy-page scans at all (without them there is no
    /// model to tell, and no disagreement to warn about).
    pub fsdax: bool,
}

impl IdleRefcountEvidence {
    /// Idle refcount of an fsdax page: 0 where `dax_break_layout` is.
    pub fn idle_refcount(&self) -> u32 {
        if self.dax_break_layout {
            0
        } else {
            1
        }
    }

    /// Whether the second marker says the same as the first.
    pub fn agrees(&self) -> bool {
        !self.fsdax || self.dax_break_layout != self.devmap_put.is_some()
    }

    /// A one-line warning when the markers disagree.
    pub fn warning(&self) -> Option<String> {
        if self.agrees() {
            return None;
        }
        let idle = self.idle_refcount();
        Some(match &self.devmap_put {
            Some(put) => format!(
                "idle refcount: dax_break_layout (6.15+, idle at 0) and the devmap put {put} (before 6.15, idle at 1) are both present; assuming {idle} from dax_break_layout: findings that judge a page idle may be wrong"
            ),
            None => format!(
                "idle refcount: neither dax_break_layout (6.15+, idle at 0) nor a devmap put function (before 6.15, idle at 1) is present; assuming {idle}: findings that judge a page idle may be wrong"
            ),
        })
    }
}

impl KernelFacts {
    pub fn gather(btf: Option<&Btf>, kallsyms: &Kallsyms) -> KernelFacts {
        let d = KernelConfig::X86_64_DEFAULTS;
        let mut warnings = Vec::new();
        if btf.is_none() {
            warnings.push(
                "no kernel BTF (/sys/kernel/btf/vmlinux): using x86_64 default offsets; fentry and BTF tracepoints are off"
                    .to_string(),
            );
        }
        let w = &mut warnings;
        let mut c = KernelConfig {
            page_refcount: offset(btf, "page", "_refcount", d.page_refcount, w),
            page_mapping: offset(btf, "page", "mapping", d.page_mapping, w),
            page_struct_size: btf
                .and_then(|b| b.struct_size("page"))
                .unwrap_or(d.page_struct_size),
            inode_ino: offset(btf, "inode", "i_ino", d.inode_ino, w),
            inode_size: offset(btf, "inode", "i_size", d.inode_size, w),
            inode_sb: offset(btf, "inode", "i_sb", d.inode_sb, w),
            sb_dev: offset(btf, "super_block", "s_dev", d.sb_dev, w),
            mapping_host: offset(btf, "address_space", "host", d.mapping_host, w),
            bio_io_vec: offset(btf, "bio", "bi_io_vec", d.bio_io_vec, w),
            bio_vcnt: offset(btf, "bio", "bi_vcnt", d.bio_vcnt, w),
            bvec_page: offset(btf, "bio_vec", "bv_page", d.bvec_page, w),
            bvec_len: offset(btf, "bio_vec", "bv_len", d.bvec_len, w),
            bvec_offset: offset(btf, "bio_vec", "bv_offset", d.bvec_offset, w),
            inode_mapping: offset(btf, "inode", "i_mapping", d.inode_mapping, w),
            bio_vec_size: btf
                .and_then(|b| b.struct_size("bio_vec"))
                .unwrap_or(d.bio_vec_size),
            // Renamed in 6.16 ("mm: rename page->index to page->__folio_index").
            page_index: offset_of_any(btf, "page", &["index", "__folio_index"], d.page_index, w),
            // `i_pages` is an embedded `struct xarray`.
            mapping_xa_head: offset(btf, "address_space", "i_pages", 8, w)
                + offset(btf, "xarray", "xa_head", 8, w),
            xa_node_shift: offset(btf, "xa_node", "shift", d.xa_node_shift, w),
            xa_node_slots: offset(btf, "xa_node", "slots", d.xa_node_slots, w),
            ..d
        };
        if !daxrace_common::config::page_read_window(
            c.page_refcount as usize,
            c.page_mapping as usize,
            c.page_index as usize,
        )
        .1
        {
            warnings.push(format!(
                "struct page's mapping ({}), index ({}) and _refcount ({}) span more than the {} bytes the hooks read at once: they read as 0, and no pinned page is seen",
                c.page_mapping,
                c.page_index,
                c.page_refcount,
                daxrace_common::config::PAGE_READ_BYTES
            ));
        }
        // Since "fs/dax: properly refcount fs dax pages" (v6.15) an idle fsdax
        // page has refcount 0 and waiters wait on the page itself. The same
        // series added dax_break_layout(): its presence tells the model, and
        // the devmap put functions it removed confirm it.
        let has = |name: &str| kallsyms.resolve_function(name).is_some();
        let evidence = IdleRefcountEvidence {
            dax_break_layout: has("dax_break_layout"),
            devmap_put: DEVMAP_PUT_FUNCTIONS
                .iter()
                .find(|f| has(f))
                .map(|f| f.to_string()),
            fsdax: has("dax_layout_busy_page_range") || has("dax_layout_busy_page"),
        };
        warnings.extend(evidence.warning());
        let new_model = evidence.dax_break_layout;
        // The idle refcount and what a waiter waits on come from the
        // plan's table of refcount models, told by the same marker as the
        // evidence (which only adds the cross-check's warning).
        let model = daxrace_plan::wait_model(has);
        debug_assert_eq!(model.idle_refcount, evidence.idle_refcount());
        c.idle_refcount = model.idle_refcount;
        c.wait_on_refcount = u32::from(model.var == daxrace_plan::WaitVar::PageRefcount);
        let vmemmap = kallsyms.get("vmemmap_base").filter(|s| s.addr != 0);
        match vmemmap {
            Some(s) => c.vmemmap_base_addr = s.addr,
            None => warnings.push(format!(
                "no kernel symbol vmemmap_base: pfns assume the default base {:#x}",
                d.vmemmap_default
            )),
        }
        // FOLL_PIN pins count 1024 each where the kernel has pin accounting
        // for DAX (the folio-based put path); Debian 6.1 takes plain refs.
        let pin_bias = if kallsyms
            .resolve_function("__put_devmap_managed_folio_refs")
            .is_some()
            || new_model
        {
            1024
        } else {
            0
        };
        // Plain loads of a page's fields need the kfunc that types an
        // address as a struct page (6.2+), and that struct's id. The hooks
        // turn the `mapping` they load back into a number by subtracting
        // the typed page (`read_page` in the eBPF crate), which the
        // verifier allows only when the load gave a pointer.
        let (rdonly_cast_id, page_btf_id) = btf
            .filter(|b| b.member_is_pointer("page", "mapping") == Some(true))
            .and_then(|b| Some((b.func_type_id("bpf_rdonly_cast")?, b.struct_id("page")?)))
            .unzip();
        c.page_btf_id = page_btf_id.unwrap_or(0);
        // The current task's name and ids by plain loads need BTF (the
        // helper that types `current` is verified against it) and the
        // three offsets; without them the hooks call the helpers.
        if let Some((comm, pid, tgid)) = btf.and_then(|b| {
            Some((
                b.member_offset("task_struct", "comm")?,
                b.member_offset("task_struct", "pid")?,
                b.member_offset("task_struct", "tgid")?,
            ))
        }) {
            (c.task_btf, c.task_comm, c.task_pid, c.task_tgid) = (1, comm, pid, tgid);
        }
        KernelFacts {
            config: c,
            page_refcount_offset: c.page_refcount,
            page_mapping_offset: c.page_mapping,
            page_struct_size: c.page_struct_size,
            idle_refcount: c.idle_refcount,
            wait_var_offset: if c.wait_on_refcount != 0 {
                c.page_refcount
            } else {
                0
            },
            pin_bias,
            vmemmap_base_symbol: vmemmap.is_some(),
            rdonly_cast_id,
            idle_refcount_evidence: evidence,
            warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(symbols: &[&str]) -> KernelFacts {
        let text: String = symbols
            .iter()
            .map(|s| format!("ffffffff81400200 T {s}\n"))
            .collect();
        KernelFacts::gather(None, &Kallsyms::parse(&text))
    }

    fn idle_warnings(f: &KernelFacts) -> Vec<&String> {
        f.warnings
            .iter()
            .filter(|w| w.starts_with("idle refcount"))
            .collect()
    }

    #[test]
    fn the_idle_refcount_markers_agree_on_debian_kernels() {
        let busy = "dax_layout_busy_page_range";
        let k61 = kernel(&[busy, "__put_devmap_managed_page_refs"]);
        let k612 = kernel(&[busy, "__put_devmap_managed_folio_refs"]);
        let k73 = kernel(&[busy, "dax_break_layout", "free_zone_device_folio"]);
        for (f, idle) in [(&k61, 1), (&k612, 1), (&k73, 0)] {
            assert_eq!(f.idle_refcount, idle);
            assert!(idle_warnings(f).is_empty(), "{:?}", f.warnings);
        }
        assert_eq!(
            k61.idle_refcount_evidence.devmap_put.as_deref(),
            Some("__put_devmap_managed_page_refs")
        );
    }

    #[test]
    fn disagreeing_markers_warn_in_one_line_and_dax_break_layout_decides() {
        let busy = "dax_layout_busy_page_range";
        let both = kernel(&[busy, "dax_break_layout", "__put_devmap_managed_folio_refs"]);
        let neither = kernel(&[busy, "free_zone_device_folio"]);
        for (f, idle) in [(&both, 0), (&neither, 1)] {
            assert_eq!(f.idle_refcount, idle);
            let w = idle_warnings(f);
            assert_eq!(w.len(), 1, "{:?}", f.warnings);
            assert!(!w[0].contains('\n'));
            assert!(w[0].contains(&format!("assuming {idle}")), "{}", w[0]);
        }
        // In the trace header's facts too.
        let header = serde_json::to_value(&both).expect("serializes");
        assert_eq!(header["idle_refcount_evidence"]["dax_break_layout"], true);
        assert!(header["warnings"]
            .as_array()
            .expect("a list")
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.starts_with("idle refcount"))));
    }

    #[test]
    fn a_kernel_without_fsdax_has_no_model_to_doubt() {
        let f = kernel(&["vmemmap_base"]);
        assert!(idle_warnings(&f).is_empty(), "{:?}", f.warnings);
    }
}
