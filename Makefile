# Umbra: the user's entry point. `make help` lists the targets.
#
#   make run  [SCENARIO=kernel] [EMU=qemu|bochs|kvm] [TIMEOUT=secs]
#   make run  GUEST=path/to/kernel [RAM=64M] [CMDLINE="..."] [MMU=ept|shadow] [VCPUS=1..8] [FLAT=1] [EMU=...]
#   make test
#   make trace [SCENARIO=demo] [EMU=bochs|kvm|qemu]
#
# The scenario list lives in tests/src/scenarios.rs (`make scenarios` prints it).

SHELL := /bin/bash
.DEFAULT_GOAL := help
# Targets run their prerequisites in the order written (setup, then builds, then boots).
.NOTPARALLEL:

# rustup installs cargo here; `make setup` may have just done so.
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
SCENARIO ?= demo
TIMEOUT ?=
# Default emulator: QEMU+KVM where /dev/kvm exists and the CPU has VMX, otherwise Bochs.
# Whether the user named an emulator (`make fuzz` defaults to QEMU, not to this default).
EMU_ORIGIN := $(origin EMU)
ifeq ($(origin EMU),undefined)
EMU := $(shell if [ -e /dev/kvm ] && grep -qw vmx /proc/cpuinfo 2>/dev/null; then echo kvm; else echo bochs; fi)
endif

BUILD := build
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
KERNEL_TARGET := x86_64-unknown-none
KERNEL := $(TARGET_DIR)/$(KERNEL_TARGET)/release/umbra-kernel
ISO := $(BUILD)/umbra.iso
ISO_ROOT := $(BUILD)/iso-root
HARNESS := $(TARGET_DIR)/release/umbra-harness
# User services (services/*): static ELFs linked with userlib/link.ld, loaded as Multiboot2
# modules from /boot/services/<name> (the manifest lines are in tests/src/bootcfg.rs).
# SERVICES, GUESTS and FLAT_GUESTS are the definition: the harness tests check that
# BOOT_MODULES (tests/src/bootcfg.rs) and the services clippy step (tests/src/orchestrate.rs)
# name exactly these.
SERVICES := supervisor kernel-tests echo ipc-suite bench-ipc mmu-service trace vmm-service vmm-suite fuzz
# Test guests (services/guests), loaded as boot modules from /boot/guests/<name> for the VMM;
# guest-bench and guest-isolation are flat 64-bit images (objcopy -O binary).
GUESTS := guest-multiboot guest-msr guest-long guest-pae guest-badmem guest-unsupported guest-triple guest-random guest-spaces64 guest-spacespae guest-spaces32 \
	guest-mmubench64 guest-mmubenchpae guest-mmubench32 guest-fpu guest-exits guest-timer guest-uart-rtc guest-lapic guest-acpi guest-mmio guest-ioapic guest-smp \
	guest-reboot
FLAT_GUESTS := guest-bench guest-isolation
SERVICE_BIN := $(TARGET_DIR)/$(KERNEL_TARGET)/release
# Copy a service into an ISO root without its DWARF (it keeps its symbol table): the loader
# reads every module into memory, and the debug info is most of the file.
OBJCOPY := $(shell command -v objcopy 2>/dev/null)
copy_service = $(if $(OBJCOPY),$(OBJCOPY) --strip-debug $(1) $(2),cp $(1) $(2))

# Limine: its binary release (limine-bios.sys, limine-bios-cd.bin, limine-uefi-cd.bin,
# BOOTX64.EFI and limine.c for the host tool) from LIMINE_DIR, else ../shared/limine, else a
# shallow clone of Limine's binary branch (tried once per build directory; needs the network).
# Not found: `make iso` builds the GRUB ISO only and says so; Limine runs are skipped.
LIMINE_DIR ?=
LIMINE_BRANCH := v8.x-binary
LIMINE_URL := https://github.com/limine-bootloader/limine.git
LIMINE_CLONE := $(BUILD)/limine-bin
LIMINE_ISO := $(BUILD)/umbra-limine.iso
LIMINE_ROOT := $(BUILD)/limine-root
LIMINE_TOOL := $(BUILD)/limine
# The loader `make run` boots through: limine when the Limine ISO was built, else grub.
LOADER ?= auto
FIRMWARE ?= bios

.PHONY: help setup ensure-setup kernel services harness iso limine-iso limine-stage run guest-check example-kernel test fuzz fuzz-vm bench trace profile boot-configs scenarios clean linux-assets linux-native linux

# A user's own kernel (`make run GUEST=...`): the harness reads these from the environment, so
# any command line (quotes, `$`) reaches the guest as typed.
export GUEST CMDLINE RAM MMU FLAT VCPUS INITRD POOL PREV_ROOTS KVM_POLICY
# The harness options of a GUEST= run.
GUEST_ARGS = --guest "$$GUEST" --guest-cmdline "$$CMDLINE" $(if $(RAM),--ram "$$RAM") $(if $(MMU),--mmu "$$MMU") \
	$(if $(VCPUS),--vcpus "$$VCPUS") $(if $(filter-out 0 no,$(FLAT)),--flat) \
	$(if $(INITRD),--initrd "$$INITRD") $(if $(POOL),--pool "$$POOL") \
	$(if $(PREV_ROOTS),--prev-roots "$$PREV_ROOTS") \
	$(if $(filter-out 0 no,$(KVM_POLICY)),--kvm-policy)

# The example kernel (tests/example-kernel), built with the system's assembler and linker.
EXAMPLE_KERNEL := $(BUILD)/example-kernel.elf

help:
	@echo "Umbra: microkernel-based x86_64 hypervisor"
	@echo
	@echo "  make setup         install what is missing (apt packages, pinned Rust toolchain)"
	@echo "  make services      build the user services ($(SERVICES))"
	@echo "  make iso           build the kernel, the services, $(LIMINE_ISO) (Limine, BIOS and UEFI)"
	@echo "                     when Limine's binaries are found (LIMINE_DIR, ../shared/limine, a clone),"
	@echo "                     and $(ISO) (GRUB, Multiboot2)"
	@echo "  make run           boot one scenario and stream its console:"
	@echo "                       SCENARIO=$(SCENARIO) (make scenarios lists them), EMU=$(EMU) (qemu|bochs|kvm),"
	@echo "                       LOADER=limine|grub (default: limine when its ISO was built), FIRMWARE=bios|uefi,"
	@echo "                       TIMEOUT=secs; log in $(BUILD)/serial-EMU-SCENARIO.log; exit 0 iff it passed"
	@echo "  make run GUEST=path/to/kernel [RAM=64M] [CMDLINE=\"...\"] [MMU=ept|shadow] [VCPUS=1..8] [FLAT=1] [EMU=...]"
	@echo "                     run your own multiboot (v1) ELF kernel (or, FLAT=1, a flat 64-bit image entered"
	@echo "                     at 2 MiB) under the VMM: its console, its result, the exit summary; RAM up to 1G;"
	@echo "                     exit 0 iff it wrote 0 to port 0xf4 (isa-debug-exit). Example: make example-kernel,"
	@echo "                     then make run GUEST=$(EXAMPLE_KERNEL) CMDLINE=\"hello world\""
	@echo "                     A Linux bzImage is booted by the Linux boot protocol: INITRD=path, POOL=pages"
	@echo "                     (shadow page pool), KVM_POLICY=1 (shadow: PAE roots never cached)"
	@echo "                     PREV_ROOTS=0..30: previous roots each shadow-paged vCPU caches (default 8)"
	@echo "  make run GUEST=linux64|linux-pae [MMU=ept|shadow] [KVM_POLICY=1] EMU=bochs"
	@echo "                     Debian's 64-bit or 32-bit PAE kernel with the test initramfs (make linux-assets"
	@echo "                     first): the Linux console, the init's checks, exits and shadow MMU figures"
	@echo "  make example-kernel  build $(EXAMPLE_KERNEL) (tests/example-kernel, with as and ld)"
	@echo "  make test          fmt, clippy, host tests, scenarios on QEMU and Bochs;"
	@echo "                     last line: N passed, M failed"
	@echo "  make fuzz          the long fuzz run on QEMU: SEED=$(FUZZ_SEED) COUNT=$(FUZZ_COUNT) (COUNT malformed messages to"
	@echo "                     every service and COUNT/10 random syscalls from a hostile task); make test runs a short one"
	@echo "  make fuzz-vm       the long VM fuzz run in Bochs: SEED=... COUNT=$(FUZZ_VM_COUNT) (COUNT vCPU runs against a hostile"
	@echo "                     exit handler, COUNT/2 guests running random code and page tables); make test runs a short one"
	@echo "  make bench         benchmarks in Bochs: IPC round trips (build/bench/ipc.csv), VM exit round trips"
	@echo "                     via the VMM vs the in-kernel floor (build/bench/vmm.csv), the shadow MMU per"
	@echo "                     paging mode (build/bench/mmu.csv); shadow MMU on the host (criterion)"
	@echo "  make profile       one path's instructions from a Bochs trace, per function (default: a CPUID"
	@echo "                     exit via the VMM; SCENARIO=, BREAK=ELF:FUNCTION:BYTES, SKIP=, STEPS=)"
	@echo "  make trace         run a scenario with exit tracing on (SCENARIO=demo, EMU=bochs unless named, TIMEOUT=secs):"
	@echo "                     per VM, a table of exit reasons (count, % of exits, % of time, min/median/p99/max"
	@echo "                     cycles), build/trace/SCENARIO.csv and build/trace/SCENARIO.svg (latency per reason);"
	@echo "                     LOG=path reports on an existing serial log without booting"
	@echo "  make linux-assets  download Debian's amd64 and 686-pae kernels and busybox-static into $(BUILD)/linux/ARCH/"
	@echo "                     (cached) and build the test initramfs (tests/linux/: init, tsc.S)"
	@echo "  make linux-native  boot a Linux kernel and the test initramfs in Bochs without Umbra (the baseline):"
	@echo "                     ARCH=amd64|i386 (default amd64), TIMEOUT=secs; prints the init's report"
	@echo "  make linux         every Linux combination on Bochs (~20 min): native, EPT, shadow, KVM policy;"
	@echo "                     boot ratios, prev_roots hit rates, $(BUILD)/linux/report.csv"
	@echo "  make boot-configs  regenerate tests/boot/grub.cfg and limine.cfg from the scenario table"
	@echo "  make clean         remove $(BUILD)/ and cargo's target/"

setup:
	@tests/setup.sh

# Cheap check first; the full setup only when something is missing.
ensure-setup:
	@tests/setup.sh --check >/dev/null 2>&1 || tests/setup.sh

kernel:
	$(CARGO) build -p microkernel --bin umbra-kernel --target $(KERNEL_TARGET) --release

services:
	$(CARGO) build --target $(KERNEL_TARGET) --release $(addprefix -p ,$(SERVICES)) -p guests

harness:
	@$(CARGO) build -q -p umbra-tests --release --bin umbra-harness

# Copies the services and guests into an ISO root ($(1)).
define copy_modules
	@mkdir -p $(1)/boot/services $(1)/boot/guests
	@$(foreach s,$(SERVICES),$(call copy_service,$(SERVICE_BIN)/$(s),$(1)/boot/services/$(s)) &&) true
	@$(foreach g,$(GUESTS),$(call copy_service,$(SERVICE_BIN)/$(g),$(1)/boot/guests/$(g)) &&) true
	@$(foreach g,$(FLAT_GUESTS),objcopy -O binary $(SERVICE_BIN)/$(g) $(1)/boot/guests/$(g).bin &&) true
endef

iso: ensure-setup kernel services harness
	@rm -rf $(ISO_ROOT) && mkdir -p $(ISO_ROOT)/boot/grub
	@cp $(KERNEL) $(ISO_ROOT)/boot/umbra-kernel
	$(call copy_modules,$(ISO_ROOT))
	@cp tests/boot/grub.cfg $(ISO_ROOT)/boot/grub/grub.cfg
	@grub-mkrescue -o $(ISO) $(ISO_ROOT) >$(BUILD)/grub-mkrescue.log 2>&1 || \
		{ cat $(BUILD)/grub-mkrescue.log; echo "grub-mkrescue failed (run \`make setup\`?)" >&2; exit 1; }
	@echo "built $(ISO) (GRUB, Multiboot2; every scenario in its menu)"
	@$(MAKE) --no-print-directory limine-iso

# Finds Limine's binaries, then stages and builds the Limine ISO (limine-stage).
limine-iso: kernel services harness
	@mkdir -p $(BUILD); dir="$(LIMINE_DIR)"; \
	if [ -z "$$dir" ] && [ -f ../shared/limine/limine-bios.sys ]; then dir=../shared/limine; fi; \
	if [ -z "$$dir" ] && [ -f $(LIMINE_CLONE)/limine-bios.sys ]; then dir=$(LIMINE_CLONE); fi; \
	if [ -z "$$dir" ] && [ ! -e $(BUILD)/limine-clone-failed ] && command -v git >/dev/null; then \
		echo "make iso: no LIMINE_DIR or ../shared/limine; cloning Limine's $(LIMINE_BRANCH) branch"; \
		if GIT_TERMINAL_PROMPT=0 timeout 30 git clone -q --depth=1 --branch=$(LIMINE_BRANCH) \
			$(LIMINE_URL) $(LIMINE_CLONE); then dir=$(LIMINE_CLONE); \
		else rm -rf $(LIMINE_CLONE); touch $(BUILD)/limine-clone-failed; fi; \
	fi; \
	if [ -z "$$dir" ]; then \
		rm -rf $(LIMINE_ROOT) $(LIMINE_TOOL) $(LIMINE_ISO); \
		echo "make iso: Limine's binaries not found (LIMINE_DIR unset, no ../shared/limine, clone failed):"; \
		echo "          only the GRUB ISO is built; Limine runs are skipped"; \
	else $(MAKE) --no-print-directory limine-stage LIMINE_FOUND="$$dir"; fi

# The Limine ISO, as in Limine's own instructions (xorriso with the BIOS and UEFI CD images,
# then `limine bios-install`; see tests/src/limine.rs). The host tool is compiled into $(BUILD)
# (the release folder may be read-only). limine.cfg goes in as /boot/limine/limine.conf.
limine-stage:
	@for f in limine-bios.sys limine-bios-cd.bin limine-uefi-cd.bin BOOTX64.EFI limine.c; do \
		test -f "$(LIMINE_FOUND)/$$f" || { echo "make iso: $(LIMINE_FOUND)/$$f not found" >&2; exit 1; }; done
	@test "$(LIMINE_TOOL)" -nt "$(LIMINE_FOUND)/limine.c" || \
		cc -std=c99 -O2 -pipe "$(LIMINE_FOUND)/limine.c" -o $(LIMINE_TOOL)
	@rm -rf $(LIMINE_ROOT) && mkdir -p $(LIMINE_ROOT)/boot/limine $(LIMINE_ROOT)/EFI/BOOT
	@cp $(KERNEL) $(LIMINE_ROOT)/boot/umbra-kernel
	$(call copy_modules,$(LIMINE_ROOT))
	@cp "$(LIMINE_FOUND)"/limine-bios.sys "$(LIMINE_FOUND)"/limine-bios-cd.bin "$(LIMINE_FOUND)"/limine-uefi-cd.bin $(LIMINE_ROOT)/boot/limine/
	@cp "$(LIMINE_FOUND)"/BOOTX64.EFI $(LIMINE_ROOT)/EFI/BOOT/
	@if [ -f "$(LIMINE_FOUND)/BOOTIA32.EFI" ]; then cp "$(LIMINE_FOUND)/BOOTIA32.EFI" $(LIMINE_ROOT)/EFI/BOOT/; fi
	@$(HARNESS) limine-iso --build-dir $(BUILD)

# Linux guests by name (GUEST=linux64 or SCENARIO=linux-pae): their assets come first.
LINUX_GUESTS := linux64 linux-pae
LINUX_NAMED := $(filter $(LINUX_GUESTS),$(GUEST) $(SCENARIO))

run: ensure-setup harness $(if $(LINUX_NAMED),linux-assets) $(if $(GUEST),guest-check) iso
	@$(HARNESS) run --emu $(or $(EMU),auto) $(if $(GUEST),$(GUEST_ARGS),--scenario $(or $(SCENARIO),demo)) \
		$(if $(TIMEOUT),--timeout $(TIMEOUT)) --loader $(or $(LOADER),auto) --firmware $(or $(FIRMWARE),bios)

# GUEST=: the file is checked (a kernel that fits its RAM) before anything is built or booted.
guest-check: harness
	@$(HARNESS) check-guest $(GUEST_ARGS)

example-kernel: $(EXAMPLE_KERNEL)

$(EXAMPLE_KERNEL): tests/example-kernel/kernel.S tests/example-kernel/link.ld
	@mkdir -p $(BUILD)
	as --32 -o $(BUILD)/example-kernel.o tests/example-kernel/kernel.S
	ld -m elf_i386 -n --no-warn-rwx-segments -T tests/example-kernel/link.ld -o $@ $(BUILD)/example-kernel.o

# The harness runs every step (including `make iso`) and prints `N passed, M failed` last.
test: ensure-setup
	@$(CARGO) build -q -p umbra-tests --release --bin umbra-harness || \
		{ echo "make test: the harness (tests/) does not build"; echo "0 passed, 1 failed"; exit 1; }
	@$(HARNESS) test

# The long fuzz run (scenario fuzz on QEMU): COUNT messages and COUNT/10 syscalls from SEED.
# `make test` runs the same scenario with the fuzzer's short defaults.
FUZZ_SEED := $(or $(SEED),$(shell date +%s))
FUZZ_COUNT := $(or $(COUNT),1000000)
fuzz: ensure-setup harness iso
	@$(HARNESS) run --emu $(if $(filter undefined,$(EMU_ORIGIN)),qemu,$(EMU)) --scenario fuzz --cmdline "fuzz.seed=$(FUZZ_SEED) fuzz.count=$(FUZZ_COUNT)" --timeout $(or $(TIMEOUT),7200)

# The long VM fuzz run (scenario fuzz-vm, in Bochs: it needs VMX): COUNT vCPU runs against a
# hostile exit handler and COUNT/2 random guests through the VMM, from SEED.
FUZZ_VM_COUNT := $(or $(COUNT),4000)
fuzz-vm: ensure-setup harness iso
	@$(HARNESS) run --emu $(if $(filter undefined,$(EMU_ORIGIN)),bochs,$(EMU)) --scenario fuzz-vm --cmdline "fuzz.seed=$(FUZZ_SEED) fuzz.count=$(FUZZ_VM_COUNT)" --timeout $(or $(TIMEOUT),7200)

# IPC round trips, VM exit round trips and the shadow MMU in Bochs (deterministic instruction
# counts; writes build/bench/ipc.csv, vmm.csv and mmu.csv), then the host benchmarks of the
# shadow MMU (criterion).
bench: ensure-setup harness iso
	@$(HARNESS) bench-ipc
	@$(HARNESS) bench-vmm
	@$(HARNESS) bench-mmu
	@if ls mmu-service/benches/*.rs >/dev/null 2>&1 || grep -q '^\[\[bench\]\]' mmu-service/Cargo.toml; then \
		$(CARGO) bench -p mmu-service; \
	else \
		echo "make bench: mmu-service has no bench target yet (mmu-service/benches/); nothing to run"; \
	fi

# A scenario with exit tracing on (`trace` on the kernel command line), in Bochs unless EMU is
# named: the report table, build/trace/SCENARIO.csv and .svg. LOG=path: only report on a log.
# GUEST=: a user's own kernel traced (scenario guest; the GUEST= options of `make run`).
TRACE_SCENARIO := $(or $(SCENARIO),demo)
trace: ensure-setup harness $(if $(LINUX_NAMED),linux-assets) $(if $(GUEST),guest-check) $(if $(LOG),,iso)
	@$(HARNESS) trace $(if $(GUEST),$(GUEST_ARGS),--scenario $(TRACE_SCENARIO)) \
		$(if $(LOG),--log $(LOG),--emu $(if $(filter undefined,$(EMU_ORIGIN)),bochs,$(EMU)) \
		$(if $(TIMEOUT),--timeout $(TIMEOUT)) --loader $(or $(LOADER),auto))

# Where one path's instructions go, from a Bochs instruction trace (tests/src/profile.rs).
# Default: a CPUID exit handled by the VMM (bench-vmm's guest, its 9th CPUID). The IPC call:
#   make profile SCENARIO=bench-ipc BREAK=$(PROFILE_BIN)/bench-ipc:bench_ipc::measure:0f05 STEPS=1200
PROFILE_BIN := $(TARGET_DIR)/$(KERNEL_TARGET)/release
profile: ensure-setup harness iso
	@$(HARNESS) profile --scenario $(if $(filter command line environment,$(origin SCENARIO)),$(SCENARIO),bench-vmm) \
		--break $(or $(BREAK),$(PROFILE_BIN)/guest-bench:measure_cpuid:0fa2) \
		$(if $(SKIP),--skip $(SKIP)) $(if $(STEPS),--steps $(STEPS)) \
		--kernel $(PROFILE_BIN)/umbra-kernel --loader grub

# Linux guests (issue #13): Debian's kernels and busybox-static through apt, cached in
# $(BUILD)/linux/ARCH/ (tests/linux/fetch.sh), then the test initramfs (tests/linux/initramfs.sh).
linux-assets: ensure-setup
	@tests/linux/fetch.sh
	@tests/linux/initramfs.sh

# A Linux kernel and the test initramfs booted by GRUB in Bochs, no Umbra (tests/src/linux.rs).
linux-native: ensure-setup harness linux-assets
	@$(HARNESS) linux-native --arch $(or $(ARCH),amd64) $(if $(TIMEOUT),--timeout $(TIMEOUT))

# Every Linux combination on Bochs (about 20 minutes; wrap it in the Bochs lock on a shared
# machine): the native boots, then 64-bit and PAE on EPT and shadow paging, PAE also with KVM's
# root policy; the init's checks of each, the table of boot ratios and hit rates
# ($(BUILD)/linux/report.csv).
linux: ensure-setup harness linux-assets iso
	@$(HARNESS) linux-report

boot-configs: harness
	@$(HARNESS) boot-configs

scenarios: harness
	@$(HARNESS) list

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
