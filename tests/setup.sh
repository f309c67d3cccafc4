#!/usr/bin/env bash
# `make setup`: installs what Umbra's build and tests need, and only what is missing.
# Idempotent and non-interactive (CI runs it as root on Debian 12 with no stdin).
#
#   tests/setup.sh           install what is missing
#   tests/setup.sh --check   only report what is missing (exit 1 when something is)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

check_only=false
[[ ${1:-} == --check ]] && check_only=true

# --- Debian packages: a command or file each one provides -------------------------------
pkgs=()
need_cmd() { command -v "$1" >/dev/null 2>&1 || pkgs+=("$2"); }
need_file() { [[ -e $1 ]] || pkgs+=("$2"); }

need_cmd qemu-system-x86_64 qemu-system-x86
need_cmd bochs bochs
need_file /usr/share/bochs/BIOS-bochs-latest bochsbios
need_file /usr/share/vgabios/vgabios.bin vgabios
need_cmd grub-mkrescue grub-common
need_file /usr/lib/grub/i386-pc/cdboot.img grub-pc-bin
need_file /usr/share/ovmf/OVMF.fd ovmf                 # UEFI firmware for QEMU (Limine on UEFI)
need_file /usr/lib/grub/x86_64-efi/modinfo.sh grub-efi-amd64-bin   # grub-mkrescue: UEFI boot too
need_cmd xorriso xorriso
need_cmd objcopy binutils                          # service stripping, flat guest images
need_cmd as binutils                               # example kernel, Linux test initramfs (tsc.S)
need_cmd ld binutils
need_cmd bsdtar libarchive-tools                   # the Linux test initramfs (newc cpio)
need_cmd gzip gzip
need_cmd dpkg-deb dpkg                             # Linux assets: Debian's kernel packages
need_cmd mformat mtools
need_cmd mcopy mtools
need_cmd cc gcc                                   # host linker for build scripts and tests
need_file /usr/lib/x86_64-linux-gnu/crt1.o libc6-dev
if ! command -v rustup >/dev/null 2>&1; then
    need_cmd curl curl
    need_file /etc/ssl/certs/ca-certificates.crt ca-certificates
fi
# De-duplicate, keep order.
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | awk 'NF && !seen[$0]++')

# --- Rust toolchain pinned by rust-toolchain.toml ----------------------------------------
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
target=x86_64-unknown-none
components=(rustfmt clippy rust-src)
rust_missing=()
if ! command -v rustup >/dev/null 2>&1; then
    rust_missing+=("rustup")
elif ! rustup toolchain list | grep -q "^${channel}[-[:space:]]"; then
    rust_missing+=("toolchain ${channel}")
else
    rustup target list --installed --toolchain "$channel" | grep -qx "$target" ||
        rust_missing+=("target ${target}")
    installed=$(rustup component list --installed --toolchain "$channel")
    for c in "${components[@]}"; do
        grep -Eq "^${c}(-|$)" <<<"$installed" || rust_missing+=("component ${c}")
    done
fi

if $check_only; then
    if ((${#pkgs[@]} + ${#rust_missing[@]})); then
        echo "missing:${pkgs[*]:+ packages: ${pkgs[*]};}${rust_missing[*]:+ rust: ${rust_missing[*]}}"
        exit 1
    fi
    echo "setup: everything is installed"
    exit 0
fi

if ((${#pkgs[@]})); then
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { echo "setup: need root (or sudo) to install: ${pkgs[*]}" >&2; exit 1; }
        sudo=(sudo)
    fi
    echo "setup: installing Debian packages: ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # .ci/run may have refreshed the package lists already (to install make).
    [[ ${UMBRA_APT_UPDATED:-} == 1 ]] || "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}"
else
    echo "setup: Debian packages present"
fi

if ((${#rust_missing[@]})); then
    echo "setup: installing Rust: ${rust_missing[*]}"
    if ! command -v rustup >/dev/null 2>&1; then
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --no-modify-path --profile minimal --default-toolchain none
    fi
    # rustup >= 1.28 installs the toolchain of rust-toolchain.toml with `toolchain install`;
    # older versions do it on `show`. Then make sure of the target and components.
    rustup toolchain install </dev/null || rustup show </dev/null
    rustup target add --toolchain "$channel" "$target"
    rustup component add --toolchain "$channel" "${components[@]}"
else
    echo "setup: Rust ${channel} with ${target} and ${components[*]} present"
fi
