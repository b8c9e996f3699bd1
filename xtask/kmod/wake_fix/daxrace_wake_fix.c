// SPDX-License-Identifier: GPL-2.0
/*
 * daxrace_wake_fix: a live patch of __bio_release_pages() (block/bio.c,
 * object vmlinux) for Debian 12's 6.1 kernels, which fixes the lost
 * wake-up daxrace reports there (lost_wakeup), and with fix=0 puts the
 * bug back: the A/B of daxrace's VM test (xtask/src/vm/wakefix.rs) on the
 * same kernel and workload, and a workaround for a Debian 12 pmem host
 * (see docs/lost-wakeup-6.1.md for its caveats).
 *
 * The bug: 6.1.y took two upstream changes to this function as stable
 * backports, 1b151e2435fc ("block: Remove special-casing of compound
 * pages") and 38b43539d64b ("block: Fix page refcounts for unaligned
 * buffers in __bio_release_pages()"). Upstream, they came after direct
 * I/O had moved to FOLL_PIN pins released with unpin_user_page(), which
 * wakes the waiter of a DAX page; on 6.1 direct I/O takes plain references,
 * and a DAX page's waiter is woken only by put_devmap_managed_page() (in
 * put_page() and in gup's unpin), which the backported folio_put() and
 * folio_put_refs() do not call. So direct I/O into a DAX mapping drops its
 * page references without the wake_up_var() that ext4_break_layouts() and
 * xfs_break_dax_layouts() sleep on, and a hole punch or truncate sleeps
 * until a signal (see docs/lost-wakeup-6.1.md).
 *
 * The copy keeps 6.1.y's folio walk, the mark-dirty step and the page
 * count of each folio; fix=1 releases each of those references with
 * put_page(), which on 6.1 calls put_devmap_managed_page() first (the
 * 2-to-1 wake-up for fsdax pages) and folio_put() otherwise, i.e. what
 * the function did before the backports. fix=0 is 6.1.y's own
 * folio_put_refs(): the control.
 *
 * Counters, read back from /sys/module/daxrace_wake_fix/parameters:
 * calls, pages (references released), devmap_pages (of those, on
 * ZONE_DEVICE pages: the DAX pages whose waiters need the wake-up).
 * Writing 1 to reset zeroes them.
 */
#include <linux/atomic.h>
#include <linux/bio.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/pagemap.h>
#include <linux/version.h>

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 1, 0) || LINUX_VERSION_CODE >= KERNEL_VERSION(6, 2, 0)
/* The VM test reads this message from the build's output. */
#error "daxrace_wake_fix is for 6.1 only: the lost wake-up is a 6.1.y bug (later kernels release direct I/O pages with unpin_user_page(), which wakes DAX waiters)"
#endif

static bool fix = true;
module_param(fix, bool, 0644);
MODULE_PARM_DESC(fix, "1: release each page with put_page() (wakes a DAX page's waiter); 0: 6.1.y's folio_put_refs() (the bug)");

static atomic64_t calls = ATOMIC64_INIT(0);
static atomic64_t pages = ATOMIC64_INIT(0);
static atomic64_t devmap_pages = ATOMIC64_INIT(0);

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
MODULE_PARM_DESC(calls, "calls of the patched __bio_release_pages()");
module_param_cb(pages, &counter_ops, &pages, 0444);
MODULE_PARM_DESC(pages, "page references released");
module_param_cb(devmap_pages, &counter_ops, &devmap_pages, 0444);
MODULE_PARM_DESC(devmap_pages, "of those, references on ZONE_DEVICE (DAX) pages");

static int reset_set(const char *val, const struct kernel_param *kp)
{
	atomic64_set(&calls, 0);
	atomic64_set(&pages, 0);
	atomic64_set(&devmap_pages, 0);
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
MODULE_PARM_DESC(reset, "write anything: zero every counter");

/* __bio_release_pages() of 6.1.y (block/bio.c), with the release chosen by fix. */
static void wake_fix_bio_release_pages(struct bio *bio, bool mark_dirty)
{
	bool use_put_page = READ_ONCE(fix);
	struct folio_iter fi;

	atomic64_inc(&calls);
	bio_for_each_folio_all(fi, bio) {
		size_t nr_pages;

		if (mark_dirty) {
			folio_lock(fi.folio);
			folio_mark_dirty(fi.folio);
			folio_unlock(fi.folio);
		}
		nr_pages = (fi.offset + fi.length - 1) / PAGE_SIZE -
			   fi.offset / PAGE_SIZE + 1;
		atomic64_add(nr_pages, &pages);
		if (folio_is_zone_device(fi.folio))
			atomic64_add(nr_pages, &devmap_pages);
		if (!use_put_page) {
			folio_put_refs(fi.folio, nr_pages);
			continue;
		}
		/*
		 * put_page() takes the folio of the page it is given, so the
		 * head page stands for every page of the folio.
		 */
		do {
			put_page(&fi.folio->page);
		} while (--nr_pages != 0);
	}
}

static struct klp_func funcs[] = {
	{
		.old_name = "__bio_release_pages",
		.new_func = wake_fix_bio_release_pages,
	},
	{}
};

static struct klp_object objs[] = {
	{
		/* NULL name: vmlinux */
		.funcs = funcs,
	},
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init daxrace_wake_fix_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit daxrace_wake_fix_exit(void)
{
}

module_init(daxrace_wake_fix_init);
module_exit(daxrace_wake_fix_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("daxrace: the 6.1 DAX lost wake-up fixed in __bio_release_pages() (fix=0: the 6.1.y code)");
MODULE_INFO(livepatch, "Y");
