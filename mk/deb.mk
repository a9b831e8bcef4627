# Packaging: make deb, make install-xen (included by the top Makefile).

## The xen-mem-event Debian package (binary, man pages, completions,
## systemd units, /etc/default/xen-mem-event) into build/deb/, then lintian
## (no errors allowed; warnings are shown).
.PHONY: deb install-xen
deb: deps xen-src
	@deb=$$(bash pkg/build-deb.sh | tail -n 1) && \
	echo "deb: $$deb" && \
	lintian --fail-on error --tag-display-limit 0 "$$deb" && \
	echo "deb: lintian found no error"

## The patched hypervisor (release unless DEBUG=y), installed the way
## Debian's xen-hypervisor-4.17-amd64 is: /boot/xen-4.17-xme.gz and its
## .config, so that GRUB's 20_linux_xen lists a "Xen 4.17-xme" entry for
## every kernel; update-grub when it is there.  XEN_INSTALL_ROOT installs
## elsewhere (a staging tree); XEN_INSTALL_NAME changes the name.
XEN_INSTALL_ROOT ?=
XEN_INSTALL_NAME ?= xen-4.17-xme
install-xen: xen
	install -d $(XEN_INSTALL_ROOT)/boot
	install -m 0644 $(BUILD)/obj/xen-$(XEN_FLAVOUR)/xen.gz \
		$(XEN_INSTALL_ROOT)/boot/$(XEN_INSTALL_NAME).gz
	install -m 0644 $(BUILD)/obj/xen-$(XEN_FLAVOUR)/.config \
		$(XEN_INSTALL_ROOT)/boot/$(XEN_INSTALL_NAME).config
	@if [ -z "$(XEN_INSTALL_ROOT)" ] && command -v update-grub >/dev/null; then \
		update-grub; \
	else \
		echo "install-xen: $(XEN_INSTALL_ROOT)/boot/$(XEN_INSTALL_NAME).gz (run update-grub)"; \
	fi
