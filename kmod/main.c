// SPDX-License-Identifier: GPL-2.0
/*
 * cblb_module: consistent copy-on-write snapshots of live partitions.
 * Module init/exit and the total=N parameter; the rest is described in cblb.h.
 */
#define pr_fmt(fmt) "cblb: " fmt

#include <linux/module.h>
#include <linux/moduleparam.h>
#include "cblb.h"
#include "snapimage.h"
#include "tracker.h"
#include "registry.h"
#include "sysfs.h"

#define CREATE_TRACE_POINTS
#include "cblb_trace.h"


static int __init cblb_init(void)
{
	int err;

	if (cblb_total < 1 || cblb_total > CBLB_TOTAL_MAX) {
		pr_err("total=%d is out of range 1..%d\n", cblb_total, CBLB_TOTAL_MAX);
		return -EINVAL;
	}
	err = cblb_registry_init();
	if (err)
		return err;
	err = cblb_snapimage_init();
	if (err)
		goto fail_snapimage;
	err = cblb_tracker_init();
	if (err)
		goto fail_tracker;
	err = cblb_sysfs_init();
	if (err)
		goto fail_sysfs;
	pr_info("version %s loaded, total=%d\n", CBLB_VERSION, cblb_total);
	return 0;

fail_sysfs:
	cblb_tracker_exit();
fail_tracker:
	cblb_snapimage_exit();
fail_snapimage:
	cblb_registry_exit();
	return err;
}

static void __exit cblb_exit(void)
{
	cblb_sysfs_exit();
	cblb_registry_exit();
	cblb_tracker_exit();
	cblb_snapimage_exit();
	pr_info("unloaded\n");
}

module_init(cblb_init);
module_exit(cblb_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION(CBLB_VERSION);
MODULE_DESCRIPTION("cblb: consistent copy-on-write snapshots of live partitions");
