//! `umbra-harness profile`: where the instructions of one path go, from a Bochs trace.
//!
//! Bochs' TSC counts instructions, so an instruction trace *is* the cost. The run boots a
//! scenario in Bochs with its debugger: a linear breakpoint at an address of the path (the
//! guest's CPUID, a service's `syscall` stub), `skip` hits let through so that caches and
//! lazily built state are warm, then `steps` instructions traced. Every traced RIP is named
//! by the kernel's symbol table (user and guest addresses are named by their ring); the report
//! gives the instructions per function and the path in order, cut into segments at the
//! crossings: `syscall`, `iret`, `vmresume`/`vmlaunch` and the VM exit (the first instruction
//! of `vmx_exit_entry`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The Bochs debugger commands of a profile run: stop at `break_at`, let `skip` more hits
/// pass, trace `steps` instructions, quit.
pub fn debugger_commands(break_at: u64, skip: u32, steps: u32) -> String {
    let mut s = format!("lb {break_at:#x}\n");
    for _ in 0..=skip {
        s.push_str("c\n");
    }
    let _ = write!(s, "trace on\ns {steps}\nq\n");
    s
}

/// One traced instruction: its RIP, code-segment selector and mnemonic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub rip: u64,
    pub cs: u16,
    pub text: String,
}

/// The traced instructions of Bochs' debugger output. A traced line looks like
/// `(0).[655210993] [0x000001756678] 0008:0000000000200678 (unk. ctxt): cpuid ; 0fa2`;
/// the plain `(0) [...]` lines are the debugger's "next at" echo and are skipped.
pub fn parse_trace(out: &str) -> Vec<Step> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("(0).[")?;
            let (_, rest) = rest.split_once("] [")?;
            let (_, rest) = rest.split_once("] ")?;
            let (cs, rest) = rest.split_once(':')?;
            let (rip, rest) = rest.split_once(' ')?;
            let text = rest
                .split_once("): ")
                .map_or(rest, |(_, t)| t)
                .split(" ;")
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            Some(Step {
                rip: u64::from_str_radix(rip, 16).ok()?,
                cs: u16::from_str_radix(cs, 16).ok()?,
                text,
            })
        })
        .collect()
}

/// Function symbols of an ELF file: start address and name, sorted.
#[derive(Clone, Debug, Default)]
pub struct Symbols(Vec<(u64, u64, String)>);

impl Symbols {
    /// The `FUNC` symbols of `elf` (a 64-bit little-endian ELF with a symbol table).
    pub fn from_elf(bytes: &[u8]) -> Result<Symbols, String> {
        use elf::endian::LittleEndian;
        let file = elf::ElfBytes::<LittleEndian>::minimal_parse(bytes)
            .map_err(|e| format!("not an ELF file: {e}"))?;
        let (table, strings) = file
            .symbol_table()
            .map_err(|e| format!("symbol table: {e}"))?
            .ok_or("the ELF file has no symbol table")?;
        let mut v: Vec<(u64, u64, String)> = table
            .iter()
            // Functions, and the labels of assembly (no type, in a section).
            .filter(|s| {
                let t = s.st_symtype();
                s.st_value != 0
                    && (t == elf::abi::STT_FUNC
                        || t == elf::abi::STT_NOTYPE
                            && s.st_shndx != elf::abi::SHN_UNDEF
                            && s.st_shndx != elf::abi::SHN_ABS)
            })
            .filter_map(|s| {
                let name = strings.get(s.st_name as usize).ok()?;
                (!name.is_empty() && !name.starts_with('.'))
                    .then(|| (s.st_value, s.st_size, demangle(name)))
            })
            .collect();
        v.sort();
        // A label without a size reaches the next symbol.
        for i in 0..v.len() {
            if v[i].1 == 0 {
                v[i].1 = v.get(i + 1).map_or(0, |n| n.0 - v[i].0);
            }
        }
        Ok(Symbols(v))
    }

    /// A list of `(start, size, name)` (tests).
    pub fn from_list(list: &[(u64, u64, &str)]) -> Symbols {
        let mut v: Vec<_> = list
            .iter()
            .map(|&(a, s, n)| (a, s, n.to_string()))
            .collect();
        v.sort();
        Symbols(v)
    }

    /// The function `rip` lies in, if any (a symbol of size 0 reaches the next symbol).
    pub fn name(&self, rip: u64) -> Option<&str> {
        let i = self.0.partition_point(|s| s.0 <= rip).checked_sub(1)?;
        let (start, size, name) = &self.0[i];
        (size == &0 || rip < start + size).then_some(name.as_str())
    }
}

/// The address `spec` names: a hex address (`0x200678`), or `ELF:FUNCTION:BYTES`, the first
/// place inside function `FUNCTION` of ELF file `ELF` (its demangled path, or the end of it)
/// whose bytes are `BYTES` in hex (`0fa2`: a CPUID instruction).
pub fn resolve_break(spec: &str) -> Result<u64, String> {
    if let Some(hex) = spec.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).map_err(|_| format!("--break {spec}: not an address"));
    }
    // FUNCTION may hold `::`: the file ends at the first colon, the bytes start after the last.
    let parts = spec
        .rsplit_once(':')
        .and_then(|(rest, bytes)| Some((rest.split_once(':')?, bytes)));
    let Some(((file, function), pattern)) = parts else {
        return Err(format!("--break {spec}: an address or ELF:FUNCTION:BYTES"));
    };
    let pattern = (0..pattern.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(pattern.get(i..i + 2).unwrap_or("x"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("--break {spec}: BYTES is not hex"))?;
    let bytes = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    let symbols = Symbols::from_elf(&bytes)?;
    let &(start, size, _) = symbols
        .0
        .iter()
        .find(|(_, _, n)| n == function || n.ends_with(&format!("::{function}")))
        .ok_or_else(|| format!("{file}: no function {function}"))?;
    let code = function_bytes(&bytes, start, size)?;
    let at = code
        .windows(pattern.len().max(1))
        .position(|w| w == pattern.as_slice())
        .ok_or_else(|| format!("{file}: {function} holds no {:02x?}", pattern))?;
    Ok(start + at as u64)
}

/// The `size` bytes of the section contents at virtual address `start`.
fn function_bytes(elf_bytes: &[u8], start: u64, size: u64) -> Result<Vec<u8>, String> {
    use elf::endian::LittleEndian;
    let file = elf::ElfBytes::<LittleEndian>::minimal_parse(elf_bytes)
        .map_err(|e| format!("not an ELF file: {e}"))?;
    let sections = file.section_headers().ok_or("no section headers")?;
    for sh in sections.iter() {
        if sh.sh_type == elf::abi::SHT_PROGBITS
            && (sh.sh_addr..sh.sh_addr + sh.sh_size).contains(&start)
        {
            let (data, _) = file.section_data(&sh).map_err(|e| e.to_string())?;
            let from = (start - sh.sh_addr) as usize;
            let to = (from + size as usize).min(data.len());
            return Ok(data[from..to].to_vec());
        }
    }
    Err(format!("no section holds {start:#x}"))
}

/// A symbol as a path without its hash (`rustc-demangle`); LLVM's suffix of a function it
/// made local (`….llvm.5832285378245698044`) dropped first.
fn demangle(name: &str) -> String {
    let name = name.split(".llvm.").next().unwrap_or(name);
    format!("{:#}", rustc_demangle::demangle(name))
}

/// Where instruction `s` runs: a kernel function, or the ring.
fn place(s: &Step, kernel: &Symbols) -> String {
    if s.cs & 3 == 3 {
        return "<user>".to_string();
    }
    match kernel.name(s.rip) {
        Some(n) => n.to_string(),
        None if s.rip < 1 << 47 => "<guest>".to_string(),
        None => format!("<kernel {:#x}>", s.rip),
    }
}

/// A run of the path between two crossings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The crossing that starts it (`start` for the first).
    pub from: String,
    pub instructions: usize,
    /// Instructions per function, most first.
    pub functions: Vec<(String, usize)>,
}

/// The report of one traced path.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub total: usize,
    pub segments: Vec<Segment>,
    pub functions: Vec<(String, usize)>,
}

/// The crossing instruction `s` is, if it is one.
fn crossing(s: &Step, kernel: &Symbols) -> Option<&'static str> {
    let op = s.text.split_whitespace().next().unwrap_or("");
    match op {
        "syscall" => Some("syscall"),
        "iret" | "iretq" | "sysret" | "sysretq" => Some("return to ring 3"),
        "vmresume" | "vmlaunch" => Some("VM entry"),
        _ if kernel.name(s.rip) == Some("vmx_exit_entry")
            && kernel
                .0
                .iter()
                .any(|e| e.0 == s.rip && e.2 == "vmx_exit_entry") =>
        {
            Some("VM exit")
        }
        _ => None,
    }
}

fn sorted(counts: BTreeMap<String, usize>) -> Vec<(String, usize)> {
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

/// Cuts `steps` into segments at the crossings and counts instructions per function. A
/// crossing instruction ends its segment (the next one starts after it), except the VM exit,
/// whose first instruction is the kernel's.
pub fn profile(steps: &[Step], kernel: &Symbols) -> Profile {
    let mut segments = Vec::new();
    let mut all = BTreeMap::new();
    let mut current = BTreeMap::new();
    let mut from = "start".to_string();
    let mut count = 0;
    for s in steps {
        let c = crossing(s, kernel);
        if c == Some("VM exit") && count > 0 {
            segments.push(Segment {
                from: std::mem::replace(&mut from, "VM exit".to_string()),
                instructions: count,
                functions: sorted(std::mem::take(&mut current)),
            });
            count = 0;
        }
        let p = place(s, kernel);
        *all.entry(p.clone()).or_insert(0) += 1;
        *current.entry(p).or_insert(0) += 1;
        count += 1;
        if let Some(c) = c.filter(|&c| c != "VM exit") {
            segments.push(Segment {
                from: std::mem::replace(&mut from, c.to_string()),
                instructions: count,
                functions: sorted(std::mem::take(&mut current)),
            });
            count = 0;
        }
    }
    if count > 0 {
        segments.push(Segment {
            from,
            instructions: count,
            functions: sorted(current),
        });
    }
    Profile {
        total: steps.len(),
        segments,
        functions: sorted(all),
    }
}

/// The report as text: the segments in order (with their functions), then the totals.
pub fn render(p: &Profile, title: &str) -> String {
    let mut s = format!("profile: {title}: {} instructions traced\n", p.total);
    for seg in &p.segments {
        let _ = writeln!(
            s,
            "\n  after {}: {} instructions",
            seg.from, seg.instructions
        );
        for (f, n) in &seg.functions {
            let _ = writeln!(s, "    {n:6}  {f}");
        }
    }
    let _ = writeln!(s, "\n  per function:");
    for (f, n) in &p.functions {
        let _ = writeln!(s, "    {n:6}  {f}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "\
Next at t=646882605
(0) [0x000000354c0a] 0023:0000000000402c0a (unk. ctxt): call .+5825  (0x004042d0) ; e8c1160000
(0).[1] [0x000000354c0a] 0023:0000000000402c0a (unk. ctxt): syscall                   ; 0f05
(0).[2] [0x000000224862] 0008:ffffffff80001000 (unk. ctxt): push rbp                  ; 55
(0).[3] [0x000000224862] 0008:ffffffff80001004 (unk. ctxt): mov rax, rbx              ; 4889d8
(0).[4] [0x000000224862] 0008:ffffffff80002000 (unk. ctxt): vmresume                  ; 0f01c3
(0).[5] [0x000001756678] 0008:0000000000200678 (unk. ctxt): cpuid                     ; 0fa2
(0).[6] [0x000000224862] 0008:ffffffff80003000 (unk. ctxt): push r15                  ; 4157
(0).[7] [0x000000224862] 0008:ffffffff80001008 (unk. ctxt): iret                      ; 48cf
";

    fn symbols() -> Symbols {
        Symbols::from_list(&[
            (0xffff_ffff_8000_1000, 0x100, "on_syscall"),
            (0xffff_ffff_8000_2000, 0x10, "enter"),
            (0xffff_ffff_8000_3000, 0x40, "vmx_exit_entry"),
        ])
    }

    #[test]
    fn traced_lines_are_read_and_echoes_skipped() {
        let steps = parse_trace(TRACE);
        assert_eq!(steps.len(), 7);
        assert_eq!(steps[0].rip, 0x402c0a);
        assert_eq!(steps[0].cs, 0x23);
        assert_eq!(steps[0].text, "syscall");
        assert_eq!(steps[2].text, "mov rax, rbx");
    }

    #[test]
    fn the_path_is_cut_at_each_crossing_and_named() {
        let p = profile(&parse_trace(TRACE), &symbols());
        assert_eq!(p.total, 7);
        let cut: Vec<(&str, usize)> = p
            .segments
            .iter()
            .map(|s| (s.from.as_str(), s.instructions))
            .collect();
        assert_eq!(
            cut,
            [
                ("start", 1),
                ("syscall", 3),
                ("VM entry", 1),
                ("VM exit", 2)
            ]
        );
        assert_eq!(
            p.segments[1].functions,
            [("on_syscall".to_string(), 2), ("enter".to_string(), 1)]
        );
        assert_eq!(p.segments[2].functions, [("<guest>".to_string(), 1)]);
        assert_eq!(p.functions[0], ("on_syscall".to_string(), 3));
        assert!(render(&p, "x").contains("after VM exit: 2 instructions"));
    }

    #[test]
    fn symbols_end_where_their_size_says() {
        let s = symbols();
        assert_eq!(s.name(0xffff_ffff_8000_10ff), Some("on_syscall"));
        assert_eq!(s.name(0xffff_ffff_8000_1100), None);
        assert_eq!(s.name(0x10), None);
    }

    #[test]
    fn rust_names_are_demangled_to_paths() {
        assert_eq!(
            demangle("_ZN11microkernel4kobj8schedule17h0123456789abcdefE"),
            "microkernel::kobj::schedule"
        );
        assert_eq!(demangle("memcpy"), "memcpy");
        assert!(resolve_break("/nonexistent:userlib::sys::call:0f05")
            .unwrap_err()
            .starts_with("/nonexistent:"));
        assert_eq!(resolve_break("0x1000"), Ok(0x1000));
        assert!(resolve_break("nothing").is_err());
        assert_eq!(
            demangle(
                "_ZN12umbra_kernel6kentry6resume17hc941f99bff861e36E.llvm.3578295705227807527"
            ),
            "umbra_kernel::kentry::resume"
        );
        assert_eq!(
            demangle(
                "_ZN12umbra_kernel6kentry6resume28_$u7b$$u7b$closure$u7d$$u7d$17hc941f99bff861e36E"
            ),
            "umbra_kernel::kentry::resume::{{closure}}"
        );
        assert_eq!(
            debugger_commands(0x200678, 1, 50),
            "lb 0x200678\nc\nc\ntrace on\ns 50\nq\n"
        );
    }
}
