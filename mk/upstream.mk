# make upstream-check: the series on upstream Xen master (xen-patches/upstream,
# on the snapshot in ../shared/upstream): it applies with git am, the shared
# files have not drifted from the 4.17 series, the hypervisor (release and
# debug) and the tools it touches build with -Werror, and the harness tests
# pass on master's ring core.  Without the snapshot: one line, success.
# Logic in scripts/upstream-check.sh; products in build/upstream and
# build/target-upstream.

.PHONY: upstream-check
upstream-check:
	@bash scripts/upstream-check.sh
