"""Xen split-driver block I/O: blkif layouts, shared rings, grant tables, xenstore, blkfront,
blkback, the hypervisor model and the cross-process host link.
"""
