#!/usr/bin/env bash
# `make linux-assets` (second half): the test initramfs of each arch, from the busybox that
# tests/linux/fetch.sh downloaded, tests/linux/init and tests/linux/tsc.S:
#
#   build/linux/<arch>/tsc                 tests/linux/tsc.S assembled and linked (no libc)
#   build/linux/<arch>/initramfs.cpio.gz   newc cpio, gzip: /init, /bin/busybox and the applet
#                                          links the init uses, /bin/tsc, /dev/console, /proc,
#                                          /sys, /tmp
#
#   tests/linux/initramfs.sh [amd64] [i386]   (default: both)
#
# The archive is written by bsdtar from an mtree description, so every entry's owner, mode and
# time is fixed (no root needed for the console node, and the same inputs give the same bytes).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

out=build/linux
src=tests/linux
archs=("$@")
((${#archs[@]})) || archs=(amd64 i386)

# The busybox applets tests/linux/init runs (ash's builtins aside), linked to /bin/busybox.
applets=(sh awk cat dd head md5sum mount poweroff rm seq sleep uname wc)

for tool in as ld bsdtar gzip; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "initramfs.sh: \`$tool\` not found (run \`make setup\`)" >&2
        exit 1
    }
done

sizes=()
for arch in "${archs[@]}"; do
    dir=$out/$arch
    case $arch in
    amd64) as_flags=(--64 --defsym X86_64=1) ld_emul=elf_x86_64 ;;
    i386) as_flags=(--32) ld_emul=elf_i386 ;;
    *)
        echo "initramfs.sh: unknown arch \`$arch\` (amd64 or i386)" >&2
        exit 2
        ;;
    esac
    [[ -f $dir/busybox ]] || {
        echo "initramfs.sh: $dir/busybox is missing (tests/linux/fetch.sh $arch downloads it)" >&2
        exit 1
    }

    as "${as_flags[@]}" -o "$dir/tsc.o" "$src/tsc.S"
    ld -static -s -m "$ld_emul" -o "$dir/tsc" "$dir/tsc.o"
    rm -f "$dir/tsc.o"

    spec=$dir/initramfs.mtree
    {
        echo "#mtree"
        echo "/set uid=0 gid=0 uname=root gname=root time=0.0"
        # Names with a `/` are from the root (a bare `bin` would be relative to the last directory).
        echo ". type=dir mode=0755"
        echo "./init type=file mode=0755 contents=$src/init"
        echo "./bin type=dir mode=0755"
        echo "./bin/busybox type=file mode=0755 contents=$dir/busybox"
        echo "./bin/tsc type=file mode=0755 contents=$dir/tsc"
        for a in "${applets[@]}"; do echo "./bin/$a type=link mode=0777 link=busybox"; done
        echo "./dev type=dir mode=0755"
        echo "./dev/console type=char mode=0600 device=native,5,1"
        echo "./proc type=dir mode=0555"
        echo "./sys type=dir mode=0555"
        echo "./tmp type=dir mode=01777"
    } >"$spec"
    bsdtar -c -f - --format newc "@$spec" | gzip -n -9 >"$dir/initramfs.cpio.gz.tmp"
    mv "$dir/initramfs.cpio.gz.tmp" "$dir/initramfs.cpio.gz"
    rm -f "$spec"
    sizes+=("$arch $(($(stat -c %s "$dir/initramfs.cpio.gz") / 1024)) KiB")
done
summary=$(printf ', %s' "${sizes[@]}")
echo "linux-assets: test initramfs $out/<arch>/initramfs.cpio.gz: ${summary:2}"
