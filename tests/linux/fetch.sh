#!/usr/bin/env bash
# `make linux-assets` (first half): Debian's stock kernels and busybox, downloaded with apt and
# cached under build/linux/<arch>/ (never committed):
#
#   build/linux/<arch>/vmlinuz          the kernel (boot/vmlinuz-* of linux-image-<flavour>)
#   build/linux/<arch>/kernel-version   "<package> <version>" of the versioned kernel package
#   build/linux/<arch>/busybox          busybox-static's /bin/busybox
#   build/linux/<arch>/busybox-version  "busybox-static <version>"
#
#   tests/linux/fetch.sh [amd64] [i386]   (default: both)
#
# Idempotent: an arch whose files match the versions apt's lists name is not downloaded again.
# Non-interactive (CI=true, no stdin, root on Debian 12). On success it prints one line (each
# arch's kernel package, downloaded or cached); on failure, apt's own output and what failed.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

out=build/linux
archs=("$@")
((${#archs[@]})) || archs=(amd64 i386)

# The kernel flavour's metapackage for each arch.
kernel_meta() {
    case $1 in
    amd64) echo linux-image-amd64 ;;
    i386) echo linux-image-686-pae ;;
    *)
        echo "fetch.sh: unknown arch \`$1\` (amd64 or i386)" >&2
        exit 2
        ;;
    esac
}
for a in "${archs[@]}"; do kernel_meta "$a" >/dev/null; done

sudo=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then sudo=(sudo -n); fi
export DEBIAN_FRONTEND=noninteractive

# Runs a command quietly; on failure prints its output and the reason, and exits.
quiet() {
    local what=$1 log
    shift
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1 </dev/null; then
        cat "$log" >&2
        rm -f "$log"
        echo "fetch.sh: $what failed: $*" >&2
        exit 1
    fi
    rm -f "$log"
}

apt_updated=false
apt_update() {
    $apt_updated && return 0
    quiet "refreshing apt's package lists" "${sudo[@]}" apt-get update -q
    apt_updated=true
}

# The candidate versions apt's lists give, as `name:arch version` lines, for every package the
# archs need (one apt-cache call: it is the slow part of a cached run).
native=$(dpkg --print-architecture)
candidates() {
    local pkgs=() a
    for a in "${archs[@]}"; do pkgs+=("$(kernel_meta "$a"):$a" "busybox-static:$a"); done
    apt-cache policy "${pkgs[@]}" 2>/dev/null | awk -v native="$native" '
        /^[^ ].*:$/ { name = substr($0, 1, length($0) - 1); if (name !~ /:/) name = name ":" native }
        /^ *Candidate:/ && $2 != "(none)" { print name, $2 }'
}
candidate_list=$(candidates)
candidate() { awk -v p="$1" '$1 == p { print $2 }' <<<"$candidate_list"; }

# i386 packages need the architecture added to dpkg (then fresh lists).
if printf '%s\n' "${archs[@]}" | grep -qx i386 &&
    ! { dpkg --print-architecture; dpkg --print-foreign-architectures; } | grep -qx i386; then
    quiet "adding the i386 architecture" "${sudo[@]}" dpkg --add-architecture i386
    apt_update
    candidate_list=$(candidates)
fi
# Lists that do not know the packages yet (a clean machine): refresh once.
for a in "${archs[@]}"; do
    if [[ -z $(candidate "$(kernel_meta "$a"):$a") || -z $(candidate "busybox-static:$a") ]]; then
        apt_update
        candidate_list=$(candidates)
        break
    fi
done

# Downloads package $1 (name:arch) into $2 and prints the .deb's path.
download() {
    local pkg=$1 dir=$2
    # apt-get download writes into the current directory; `_apt` must be able to write there.
    (cd "$dir" && quiet "downloading $pkg" apt-get download -q "$pkg")
    local name=${pkg%%:*} arch=${pkg##*:} deb
    deb=$(ls "$dir/${name}_"*"_${arch}.deb" 2>/dev/null | head -n1 || true)
    [[ -n $deb ]] || {
        echo "fetch.sh: apt-get download $pkg left no ${name}_*_${arch}.deb in $dir" >&2
        exit 1
    }
    echo "$deb"
}

# The versioned kernel package a metapackage's .deb depends on: the `-unsigned` one when the
# Depends line offers it as an alternative, else the first linux-image-* it names.
kernel_package() {
    local depends
    depends=$(dpkg-deb -f "$1" Depends)
    local names
    names=$(tr ',|' '\n\n' <<<"$depends" | sed 's/(.*)//; s/ //g' | grep '^linux-image-' || true)
    [[ -n $names ]] || {
        echo "fetch.sh: $1 depends on no linux-image-* package (Depends: $depends)" >&2
        exit 1
    }
    grep -- '-unsigned$' <<<"$names" | head -n1 || head -n1 <<<"$names"
}

done_list=()
for arch in "${archs[@]}"; do
    dir=$out/$arch
    mkdir -p "$dir"
    meta=$(kernel_meta "$arch")
    meta_version=$(candidate "$meta:$arch")
    bb_version=$(candidate "busybox-static:$arch")
    [[ -n $meta_version && -n $bb_version ]] || {
        echo "fetch.sh: apt knows no $meta:$arch or busybox-static:$arch (sources?)" >&2
        exit 1
    }
    stamp="$meta $meta_version"
    if [[ -f $dir/vmlinuz && -f $dir/busybox && -f $dir/kernel-version && -f $dir/busybox-version &&
        $(sed -n 2p "$dir/kernel-version") == "$stamp" &&
        $(cat "$dir/busybox-version") == "busybox-static $bb_version" ]]; then
        done_list+=("$arch $(head -n1 "$dir/kernel-version") (cached)")
        continue
    fi

    tmp=$(mktemp -d "$out/.fetch-$arch.XXXXXX")
    chmod 0777 "$tmp" # apt-get download drops privileges to `_apt`
    trap 'rm -rf "$tmp"' EXIT

    meta_deb=$(download "$meta:$arch" "$tmp")
    kpkg=$(kernel_package "$meta_deb")
    kdeb=$(download "$kpkg:$arch" "$tmp")
    mkdir "$tmp/kernel"
    dpkg-deb -x "$kdeb" "$tmp/kernel"
    vmlinuz=$(ls "$tmp/kernel/boot/"vmlinuz-* 2>/dev/null | head -n1 || true)
    [[ -n $vmlinuz ]] || {
        echo "fetch.sh: $kdeb holds no boot/vmlinuz-*" >&2
        exit 1
    }

    bb_deb=$(download "busybox-static:$arch" "$tmp")
    mkdir "$tmp/busybox"
    dpkg-deb -x "$bb_deb" "$tmp/busybox"
    [[ -x $tmp/busybox/bin/busybox ]] || {
        echo "fetch.sh: $bb_deb holds no bin/busybox" >&2
        exit 1
    }

    cp "$vmlinuz" "$dir/vmlinuz"
    cp "$tmp/busybox/bin/busybox" "$dir/busybox"
    # Line 1: the versioned package and its version; line 2: the metapackage (the cache key).
    printf '%s %s\n%s\n' "$kpkg" "$(dpkg-deb -f "$kdeb" Version)" "$stamp" >"$dir/kernel-version"
    echo "busybox-static $bb_version" >"$dir/busybox-version"
    rm -rf "$tmp"
    trap - EXIT
    done_list+=("$arch $(head -n1 "$dir/kernel-version") (downloaded)")
done
summary=$(printf ', %s' "${done_list[@]}")
echo "linux-assets: ${summary:2}; busybox-static in $out/<arch>/"
