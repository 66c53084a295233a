/* SPDX-License-Identifier: GPL-2.0 */
/*
 * cblb's own tracepoints, so tools (cblb trace, bcc, perf) observe the module without
 * kprobes: /sys/kernel/tracing/events/cblb/.
 */
#include <linux/version.h>
#ifndef CBLB_ASSIGN_STR_COMPAT
#define CBLB_ASSIGN_STR_COMPAT
/* __assign_str() lost its source argument in 6.10. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 10, 0)
#define __assign_str_compat(dst, src) __assign_str(dst)
#else
#define __assign_str_compat(dst, src) __assign_str(dst, src)
#endif
#endif

#undef TRACE_SYSTEM
#define TRACE_SYSTEM cblb

#if !defined(CBLB_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define CBLB_TRACE_H

#include <linux/tracepoint.h>

/* One batch of chunks copied from the origin to the temp files. */
TRACE_EVENT(cblb_cow,
	TP_PROTO(const char *dev, unsigned int chunks, u64 bytes, u64 ns),
	TP_ARGS(dev, chunks, bytes, ns),
	TP_STRUCT__entry(
		__string(dev, dev)
		__field(unsigned int, chunks)
		__field(u64, bytes)
		__field(u64, ns)
	),
	TP_fast_assign(
		__assign_str_compat(dev, dev);
		__entry->chunks = chunks;
		__entry->bytes = bytes;
		__entry->ns = ns;
	),
	TP_printk("dev=%s chunks=%u bytes=%llu ns=%llu", __get_str(dev), __entry->chunks,
		  __entry->bytes, __entry->ns)
);

/* A snapshot changed state (created, active, failed, removed). */
TRACE_EVENT(cblb_state,
	TP_PROTO(const char *dev, const char *old, const char *new),
	TP_ARGS(dev, old, new),
	TP_STRUCT__entry(
		__string(dev, dev)
		__string(old, old)
		__string(new, new)
	),
	TP_fast_assign(
		__assign_str_compat(dev, dev);
		__assign_str_compat(old, old);
		__assign_str_compat(new, new);
	),
	TP_printk("dev=%s old=%s new=%s", __get_str(dev), __get_str(old), __get_str(new))
);

/* A temp file was created and mapped. */
TRACE_EVENT(cblb_file,
	TP_PROTO(const char *dev, unsigned int index, u64 blocks),
	TP_ARGS(dev, index, blocks),
	TP_STRUCT__entry(
		__string(dev, dev)
		__field(unsigned int, index)
		__field(u64, blocks)
	),
	TP_fast_assign(
		__assign_str_compat(dev, dev);
		__entry->index = index;
		__entry->blocks = blocks;
	),
	TP_printk("dev=%s index=%u blocks=%llu", __get_str(dev), __entry->index,
		  __entry->blocks)
);

#endif /* CBLB_TRACE_H */

#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE cblb_trace
#include <trace/define_trace.h>
