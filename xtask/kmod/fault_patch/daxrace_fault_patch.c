// SPDX-License-Identifier: GPL-2.0
/*
 * daxrace_fault_patch: a live patch that puts the 2018 break-layouts race
 * back into today's kernels, so that daxrace's VM test
 * (xtask/src/vm/race2018.rs) sees real positives and can be judged
 * against ground truth counted here and against the kernel's own WARN in
 * dax_disassociate_entry().
 *
 * Before 6.15 it replaces ext4_break_layouts() (object ext4) and
 * xfs_break_dax_layouts() (object xfs), from 6.15 dax_break_layout()
 * (object vmlinux), with copies of the kernel's own code (fs/ext4/inode.c,
 * fs/xfs/xfs_file.c of 6.1 and 6.12; fs/dax.c of 6.15+) in which:
 *
 * - mode=buggy brings back the 2018 loop: `retry` is set only when the
 *   wait actually slept, so a busy page that went idle before the wait's
 *   first condition check ends the break although other pages of the
 *   file may still be pinned ("while (error == 0 && retry)"; for xfs,
 *   *retry set from the wait's command, as xfs_wait_dax_page() did).
 *   mode=fixed is the kernel's own loop, the control.
 * - window_ms widens the window between the busy scan and the wait's
 *   condition check: up to that long, the break polls the page the scan
 *   returned until it is idle, as a slow CPU or a preemption there would.
 * - wait_timeout_ms bounds each sleep of the wait: Debian 12's 6.1
 *   releases direct-I/O pages without wake_up_var() (daxrace's
 *   lost_wakeup), and a bounded sleep re-checks the refcount instead of
 *   stalling every breaker until a signal comes. The condition and the
 *   loop are unchanged; only the sleep ends by itself.
 *
 * Ground truth, read back from /sys/module/daxrace_fault_patch/parameters:
 * calls (of the patched functions), busy_scans (scans that returned a
 * page), early_exits (a break that returned 0 although its last scan
 * returned a page), pinned_at_return (pages of the broken range, which on
 * these kernels is the whole file, above the idle refcount when the break
 * returned 0; counted in the patched function, after its last scan; from
 * 6.15 the range the break was asked for, before it deletes it) and
 * pinned_pages (the latest of those pages, one per line). Writing 1 to
 * reset zeroes them all.
 *
 * Static helpers of ext4 and xfs (the wait's command) are copied: a patch
 * module cannot call them without klp relocations. xfs_ilock() and
 * xfs_iunlock() with XFS_MMAPLOCK_EXCL take and release the mapping's
 * invalidate_lock (since 5.15), which is what the copy does, without
 * xfs's lock tracepoints.
 */
#include <linux/atomic.h>
#include <linux/dax.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/pagemap.h>
#include <linux/sched.h>
#include <linux/spinlock.h>
#include <linux/version.h>
#include <linux/wait_bit.h>
#include <linux/xarray.h>

/*
 * 6.15 ("fs/dax: properly refcount fs dax pages") moved the loop out of
 * ext4 and xfs into fs/dax.c: dax_break_layout() scans, waits with
 * wait_page_idle() on the page itself for refcount 0, and, once a scan
 * comes back clean, deletes the range's entries (dax_delete_mapping_range())
 * itself. dax_disassociate_entry() still WARNs on a truncated page above
 * idle (Debian's 7.3: "WARNING: fs/dax.c:452 at
 * dax_disassociate_entry.isra.0+0x9c/0xc0").
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 15, 0)
#define FAULT_GENERIC_BREAK 1
/* An idle fsdax folio has refcount 0, kept on its head page. */
#define FAULT_IDLE_REFCOUNT 0
#define FAULT_PER_PAGE_REFS 0
#else
#define FAULT_GENERIC_BREAK 0
/* A DAX page is idle at refcount 1, each page of a 2 MiB entry its own. */
#define FAULT_IDLE_REFCOUNT 1
#define FAULT_PER_PAGE_REFS 1
#endif

/* fs/dax.c's entry encoding (6.1 to 7.x): value entries, pfn above 4 flag bits. */
#define FAULT_DAX_SHIFT 4
#define FAULT_DAX_PMD (1UL << 1)
#define FAULT_DAX_ZERO_PAGE (1UL << 2)
#define FAULT_DAX_EMPTY (1UL << 3)

enum fault_mode { FAULT_FIXED = 0, FAULT_BUGGY = 1 };

static int fault_mode = FAULT_FIXED;
static unsigned int window_ms = 1000;
static unsigned int wait_timeout_ms = 10;

static atomic64_t calls = ATOMIC64_INIT(0);
static atomic64_t busy_scans = ATOMIC64_INIT(0);
static atomic64_t early_exits = ATOMIC64_INIT(0);
static atomic64_t pinned_at_return = ATOMIC64_INIT(0);
/* Busy pages that went idle while the window was held open. */
static atomic64_t idle_in_window = ATOMIC64_INIT(0);
/* Waits whose command ran (the condition was false at least once). */
static atomic64_t waits_slept = ATOMIC64_INIT(0);

/* One page above idle when a break returned 0. */
struct pinned_page {
	char fs[8];
	unsigned long ino;
	unsigned long index;
	unsigned long pfn;
	int refcount;
	/* The return was an early exit (its last scan returned a page). */
	bool early;
};

#define PINNED_KEPT 48
static DEFINE_SPINLOCK(pinned_lock);
static struct pinned_page pinned[PINNED_KEPT];
static unsigned int pinned_next;	/* total recorded since reset */

/* ---- parameters ---------------------------------------------------------- */

static int mode_set(const char *val, const struct kernel_param *kp)
{
	if (sysfs_streq(val, "buggy"))
		WRITE_ONCE(fault_mode, FAULT_BUGGY);
	else if (sysfs_streq(val, "fixed"))
		WRITE_ONCE(fault_mode, FAULT_FIXED);
	else
		return -EINVAL;
	return 0;
}

static int mode_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s\n", READ_ONCE(fault_mode) == FAULT_BUGGY ? "buggy" : "fixed");
}

static const struct kernel_param_ops mode_ops = {
	.set = mode_set,
	.get = mode_get,
};
module_param_cb(mode, &mode_ops, NULL, 0644);
MODULE_PARM_DESC(mode, "buggy (the 2018 loop: retry only when the wait slept) or fixed (the kernel's loop)");

module_param(window_ms, uint, 0644);
MODULE_PARM_DESC(window_ms, "poll up to this long for the busy page to go idle before the wait (0: no window)");
module_param(wait_timeout_ms, uint, 0644);
MODULE_PARM_DESC(wait_timeout_ms, "longest single sleep of the wait before the refcount is checked again (0: no bound)");

static int counter_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read((atomic64_t *)kp->arg));
}

/* Read-only: the kernel's param code calls .set for a value given at
 * load time, so refuse it rather than leave it NULL. */
static int counter_set(const char *val, const struct kernel_param *kp)
{
	return -EPERM;
}

static const struct kernel_param_ops counter_ops = {
	.set = counter_set,
	.get = counter_get,
};
module_param_cb(calls, &counter_ops, &calls, 0444);
MODULE_PARM_DESC(calls, "calls of the patched functions");
module_param_cb(busy_scans, &counter_ops, &busy_scans, 0444);
MODULE_PARM_DESC(busy_scans, "busy-page scans in them that returned a page");
module_param_cb(early_exits, &counter_ops, &early_exits, 0444);
MODULE_PARM_DESC(early_exits, "breaks that returned 0 although their last scan returned a page");
module_param_cb(pinned_at_return, &counter_ops, &pinned_at_return, 0444);
MODULE_PARM_DESC(pinned_at_return, "pages of the broken range above idle when a break returned 0");
module_param_cb(idle_in_window, &counter_ops, &idle_in_window, 0444);
MODULE_PARM_DESC(idle_in_window, "busy pages that went idle inside the widened window");
module_param_cb(waits_slept, &counter_ops, &waits_slept, 0444);
MODULE_PARM_DESC(waits_slept, "waits that slept at least once");

/* "fs ino index pfn refcount early|late" per page, oldest first. */
static int pinned_pages_get(char *buf, const struct kernel_param *kp)
{
	unsigned int i, first, total;
	int len = 0;

	spin_lock(&pinned_lock);
	total = pinned_next;
	first = total > PINNED_KEPT ? total - PINNED_KEPT : 0;
	for (i = first; i < total; i++) {
		const struct pinned_page *p = &pinned[i % PINNED_KEPT];

		len += sysfs_emit_at(buf, len, "%s %lu %lu %#lx %d %s\n", p->fs, p->ino,
				     p->index, p->pfn, p->refcount, p->early ? "early" : "clean");
	}
	spin_unlock(&pinned_lock);
	return len;
}

static const struct kernel_param_ops pinned_pages_ops = {
	.set = counter_set,
	.get = pinned_pages_get,
};
module_param_cb(pinned_pages, &pinned_pages_ops, NULL, 0444);
MODULE_PARM_DESC(pinned_pages, "the latest pages counted in pinned_at_return: fs ino index pfn refcount early|clean");

static int reset_set(const char *val, const struct kernel_param *kp)
{
	atomic64_set(&calls, 0);
	atomic64_set(&busy_scans, 0);
	atomic64_set(&early_exits, 0);
	atomic64_set(&pinned_at_return, 0);
	atomic64_set(&idle_in_window, 0);
	atomic64_set(&waits_slept, 0);
	spin_lock(&pinned_lock);
	pinned_next = 0;
	spin_unlock(&pinned_lock);
	return 0;
}

static int reset_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "0\n");
}

static const struct kernel_param_ops reset_ops = {
	.set = reset_set,
	.get = reset_get,
};
module_param_cb(reset, &reset_ops, NULL, 0200);
MODULE_PARM_DESC(reset, "write anything: zero every counter and forget the pinned pages");

/* ---- ground truth --------------------------------------------------------- */

/*
 * Counts (and keeps) the pages of the broken range [first, last] still
 * above idle: called when a break returns 0 (from 6.15, just before it
 * deletes the range), under the invalidate lock the break holds, so no
 * page of the file can be faulted in and pinned anew meanwhile. The walk
 * reads the DAX entries as dax_layout_busy_page_range() does, without
 * unmapping or locking them, so that it changes nothing daxrace could
 * observe.
 */
static void count_pinned_at_return(struct inode *inode, const char *fs, bool early,
				   pgoff_t first, pgoff_t last)
{
	XA_STATE(xas, &inode->i_mapping->i_pages, first);
	void *entry;

	rcu_read_lock();
	xas_for_each(&xas, entry, last) {
		unsigned long v, pfn, n, i;

		if (xas_retry(&xas, entry))
			continue;
		if (!xa_is_value(entry))
			continue;
		v = xa_to_value(entry);
		if (v & (FAULT_DAX_ZERO_PAGE | FAULT_DAX_EMPTY))
			continue;
		pfn = v >> FAULT_DAX_SHIFT;
		n = (v & FAULT_DAX_PMD) && FAULT_PER_PAGE_REFS ? PTRS_PER_PMD : 1;
		for (i = 0; i < n; i++) {
			int rc = page_ref_count(pfn_to_page(pfn + i));
			struct pinned_page *p;

			if (rc <= FAULT_IDLE_REFCOUNT)
				continue;
			atomic64_inc(&pinned_at_return);
			spin_lock(&pinned_lock);
			p = &pinned[pinned_next++ % PINNED_KEPT];
			strscpy(p->fs, fs, sizeof(p->fs));
			p->ino = inode->i_ino;
			p->index = xas.xa_index + i;
			p->pfn = pfn + i;
			p->refcount = rc;
			p->early = early;
			spin_unlock(&pinned_lock);
		}
	}
	rcu_read_unlock();
}

/* ---- the patched loop ----------------------------------------------------- */

/*
 * The wait's command: ext4_wait_dax_page() and xfs_wait_dax_page() (both
 * drop the invalidate lock around schedule()), with the sleep bounded and
 * a note that it ran (the 2018 code's did_unlock).
 */
static void fault_wait_dax_page(struct inode *inode, bool *slept)
{
	unsigned int ms = READ_ONCE(wait_timeout_ms);

	*slept = true;
	filemap_invalidate_unlock(inode->i_mapping);
	if (ms)
		schedule_timeout(msecs_to_jiffies(ms));
	else
		schedule();
	filemap_invalidate_lock(inode->i_mapping);
}

/* Holds the window between the busy scan and the wait's condition check
 * open until the page is idle or window_ms has passed. */
static void widen_window(struct page *page)
{
	unsigned int ms = READ_ONCE(window_ms);
	unsigned long deadline = jiffies + msecs_to_jiffies(ms);

	if (!ms || page_ref_count(page) <= FAULT_IDLE_REFCOUNT)
		return;
	while (page_ref_count(page) > FAULT_IDLE_REFCOUNT && time_before(jiffies, deadline)) {
		if (signal_pending(current))
			return;
		usleep_range(500, 1000);
	}
	if (page_ref_count(page) <= FAULT_IDLE_REFCOUNT)
		atomic64_inc(&idle_in_window);
}

#if !FAULT_GENERIC_BREAK
/*
 * One scan and wait; returns the page the scan returned (NULL: clean) and
 * in *error the wait's result, in *slept whether the wait slept.
 */
static struct page *scan_and_wait(struct inode *inode, int *error, bool *slept)
{
	struct page *page;

	*slept = false;
	*error = 0;
	page = dax_layout_busy_page(inode->i_mapping);
	if (!page)
		return NULL;
	atomic64_inc(&busy_scans);
	widen_window(page);
	*error = ___wait_var_event(&page->_refcount,
			atomic_read(&page->_refcount) == FAULT_IDLE_REFCOUNT,
			TASK_INTERRUPTIBLE, 0, 0,
			fault_wait_dax_page(inode, slept));
	if (*slept)
		atomic64_inc(&waits_slept);
	return page;
}

/* ext4_break_layouts() (fs/ext4/inode.c, 6.1 and 6.12). */
static int fault_ext4_break_layouts(struct inode *inode)
{
	struct page *page;
	bool buggy = READ_ONCE(fault_mode) == FAULT_BUGGY;
	bool slept;
	int error;

	atomic64_inc(&calls);

	if (WARN_ON_ONCE(!rwsem_is_locked(&inode->i_mapping->invalidate_lock)))
		return -EINVAL;

	do {
		page = scan_and_wait(inode, &error, &slept);
		if (!page) {
			count_pinned_at_return(inode, "ext4", false, 0, ULONG_MAX);
			return 0;
		}
		/* fixed: rescan after every wait; buggy: only after one that slept */
	} while (error == 0 && (!buggy || slept));

	if (error == 0) {
		/* Only the buggy loop gets here: it returns 0 on a busy scan. */
		atomic64_inc(&early_exits);
		count_pinned_at_return(inode, "ext4", true, 0, ULONG_MAX);
	}
	return error;
}

/*
 * xfs_break_dax_layouts() (fs/xfs/xfs_file.c, 6.1 and 6.12): one scan and
 * wait; its caller (xfs_break_layouts()) loops while *retry. The kernel
 * sets *retry whenever the scan returned a page; the 2018 code set it in
 * the wait's command, i.e. only when the wait slept.
 */
static int fault_xfs_break_dax_layouts(struct inode *inode, bool *retry)
{
	struct page *page;
	bool buggy = READ_ONCE(fault_mode) == FAULT_BUGGY;
	bool slept;
	int error;

	atomic64_inc(&calls);

	page = scan_and_wait(inode, &error, &slept);
	if (!page) {
		/* The caller's loop ends here unless a lease break asks again. */
		count_pinned_at_return(inode, "xfs", false, 0, ULONG_MAX);
		return 0;
	}
	if (!buggy || slept)
		*retry = true;
	if (error == 0 && !*retry) {
		atomic64_inc(&early_exits);
		count_pinned_at_return(inode, "xfs", true, 0, ULONG_MAX);
	}
	return error;
}

static struct klp_func ext4_funcs[] = {
	{
		.old_name = "ext4_break_layouts",
		.new_func = fault_ext4_break_layouts,
	},
	{}
};

static struct klp_func xfs_funcs[] = {
	{
		.old_name = "xfs_break_dax_layouts",
		.new_func = fault_xfs_break_dax_layouts,
	},
	{}
};

/* ext4 and xfs are modules on Debian: each part applies when (or once) its
 * module is loaded. */
static struct klp_object fault_objs[] = {
	{
		.name = "ext4",
		.funcs = ext4_funcs,
	},
	{
		.name = "xfs",
		.funcs = xfs_funcs,
	},
	{}
};
#else
/*
 * dax_break_layout() (fs/dax.c, 6.15+), called by ext4_break_layouts() and
 * xfs_break_dax_layouts() for the whole file (and by fuse, which keeps the
 * kernel's loop and its own wait command here). mode=buggy brings back the
 * 2018 loop as above; a break that leaves it with a busy scan and no error
 * believes the range idle and deletes it, as the kernel does after a clean
 * scan: the truncation meets whatever is still pinned.
 */
static int fault_dax_break_layout(struct inode *inode, loff_t start, loff_t end,
				  void (cb)(struct inode *))
{
	const char *fs = inode->i_sb->s_type->name;
	bool ours = !strcmp(fs, "ext4") || !strcmp(fs, "xfs");
	bool buggy = ours && READ_ONCE(fault_mode) == FAULT_BUGGY;
	pgoff_t first = start >> PAGE_SHIFT;
	pgoff_t last = end == LLONG_MAX ? ULONG_MAX : end >> PAGE_SHIFT;
	struct page *page;
	bool slept;
	int error = 0;

	if (!dax_mapping(inode->i_mapping))
		return 0;
	if (ours)
		atomic64_inc(&calls);

	do {
		slept = false;
		page = dax_layout_busy_page_range(inode->i_mapping, start, end);
		if (!page)
			break;
		if (!cb) {
			/* NOWAIT (xfs with two inodes locked): the caller retries. */
			error = -ERESTARTSYS;
			break;
		}
		if (ours) {
			atomic64_inc(&busy_scans);
			widen_window(page);
		}
		error = ___wait_var_event(page, page_ref_count(page) == FAULT_IDLE_REFCOUNT,
				TASK_INTERRUPTIBLE, 0, 0,
				ours ? fault_wait_dax_page(inode, &slept) : cb(inode));
		if (slept)
			atomic64_inc(&waits_slept);
		/* fixed: rescan after every wait; buggy: only after one that slept */
	} while (error == 0 && (!buggy || slept));

	if (!page) {
		if (ours)
			count_pinned_at_return(inode, fs, false, first, last);
		dax_delete_mapping_range(inode->i_mapping, start, end);
	} else if (error == 0) {
		/* Only the buggy loop gets here: it returns 0 on a busy scan. */
		atomic64_inc(&early_exits);
		count_pinned_at_return(inode, fs, true, first, last);
		dax_delete_mapping_range(inode->i_mapping, start, end);
	}
	return error;
}

static struct klp_func vmlinux_funcs[] = {
	{
		.old_name = "dax_break_layout",
		.new_func = fault_dax_break_layout,
	},
	{}
};

/* fs/dax.c is built in: the patch applies to vmlinux (name NULL). */
static struct klp_object fault_objs[] = {
	{
		.funcs = vmlinux_funcs,
	},
	{}
};
#endif

static struct klp_patch fault_patch = {
	.mod = THIS_MODULE,
	.objs = fault_objs,
};

static int __init daxrace_fault_patch_init(void)
{
	return klp_enable_patch(&fault_patch);
}

static void __exit daxrace_fault_patch_exit(void)
{
}

module_init(daxrace_fault_patch_init);
module_exit(daxrace_fault_patch_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("daxrace test: the 2018 break-layouts race injected into ext4 and xfs by a live patch");
MODULE_INFO(livepatch, "Y");
