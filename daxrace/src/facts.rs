//! Kernel facts the programs need (struct offsets, the idle refcount, where
//! the page array starts), read from BTF and kernel symbols at start-up.
use daxrace_common::KernelConfig;
use serde::Serialize;

use crate::{btf::Btf, kallsyms::Kallsyms};

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
];

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
            ..d
        };
        // Since "fs/dax: properly refcount fs dax pages" (v6.15) an idle fsdax
        // page has refcount 0 and waiters wait on the page itself. The same
        // series added dax_break_layout(): its presence tells the model.
        let new_model = kallsyms.resolve_function("dax_break_layout").is_some();
        c.idle_refcount = if new_model { 0 } else { 1 };
        c.wait_on_refcount = if new_model { 0 } else { 1 };
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
            warnings,
        }
    }
}
