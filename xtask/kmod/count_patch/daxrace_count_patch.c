// SPDX-License-Identifier: GPL-2.0
/*
 * daxrace_count_patch: a live patch of ext4_break_layouts() that behaves
 * exactly like the kernel's own and counts its calls.
 *
 * It exists for daxrace's VM test (xtask/src/vm/livepatch.rs): once a live
 * patch owns a function, the kernel redirects it through an ftrace handler,
 * where a BPF trampoline (fentry/fexit) must not be put; daxrace has to see
 * that and trace the function with kprobes instead. The counter proves that
 * the patched copy really runs (and keeps running after daxrace detaches);
 * the copy must be faithful so that daxrace's findings stay meaningful while
 * it is loaded.
 *
 * The body follows fs/ext4/inode.c of each kernel series: the static
 * ext4_wait_dax_page() is copied too, since a patch module cannot call a
 * static function of ext4 without klp relocations.
 */
#include <linux/atomic.h>
#include <linux/dax.h>
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/pagemap.h>
#include <linux/sched.h>
#include <linux/version.h>
#include <linux/wait_bit.h>

/* Calls of the patched function since the module loaded. */
static atomic64_t daxrace_calls = ATOMIC64_INIT(0);

static int calls_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read(&daxrace_calls));
}

/* Read-only: the kernel's param code calls .set unconditionally for a
 * value given at load time, so refuse it rather than leave it NULL. */
static int calls_set(const char *val, const struct kernel_param *kp)
{
	return -EPERM;
}

static const struct kernel_param_ops calls_ops = {
	.set = calls_set,
	.get = calls_get,
};
module_param_cb(calls, &calls_ops, NULL, 0444);
MODULE_PARM_DESC(calls, "calls of the patched ext4_break_layouts()");

/* ext4_wait_dax_page(): static in ext4, hence this copy. */
static void daxrace_wait_dax_page(struct inode *inode)
{
	filemap_invalidate_unlock(inode->i_mapping);
	schedule();
	filemap_invalidate_lock(inode->i_mapping);
}

static int daxrace_ext4_break_layouts(struct inode *inode)
{
#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 15, 0)
	struct page *page;
	int error;
#endif

	atomic64_inc(&daxrace_calls);

	if (WARN_ON_ONCE(!rwsem_is_locked(&inode->i_mapping->invalidate_lock)))
		return -EINVAL;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 15, 0)
	/* 6.15 moved the loop into fs/dax.c (and the idle refcount to 0). */
	return dax_break_layout_inode(inode, daxrace_wait_dax_page);
#else
	do {
		page = dax_layout_busy_page(inode->i_mapping);
		if (!page)
			return 0;

		error = ___wait_var_event(&page->_refcount,
				atomic_read(&page->_refcount) == 1,
				TASK_INTERRUPTIBLE, 0, 0,
				daxrace_wait_dax_page(inode));
	} while (error == 0);

	return error;
#endif
}

static struct klp_func daxrace_funcs[] = {
	{
		.old_name = "ext4_break_layouts",
		.new_func = daxrace_ext4_break_layouts,
	},
	{}
};

/* ext4 is a module on Debian: the patch applies when (or once) it loads. */
static struct klp_object daxrace_objs[] = {
	{
		.name = "ext4",
		.funcs = daxrace_funcs,
	},
	{}
};

static struct klp_patch daxrace_patch = {
	.mod = THIS_MODULE,
	.objs = daxrace_objs,
};

static int __init daxrace_count_patch_init(void)
{
	return klp_enable_patch(&daxrace_patch);
}

static void __exit daxrace_count_patch_exit(void)
{
}

module_init(daxrace_count_patch_init);
module_exit(daxrace_count_patch_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("daxrace test: ext4_break_layouts() live-patched with a call counter");
MODULE_INFO(livepatch, "Y");
