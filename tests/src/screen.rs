//! The screen console check: boots `scenario=kernel` through Limine on UEFI in QEMU, waits for
//! the kernel to halt (no `isa-debug-exit`, so the machine stays up), takes QEMU's `screendump`
//! through the monitor, and looks for the serial log's last lines on the picture, drawn with
//! the font the kernel uses (each glyph rendered here from `noto-sans-mono-bitmap`, pixel by
//! pixel, independently of the kernel's drawing code).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use microkernel::fbtext::{BACKGROUND, CELL_HEIGHT, CELL_WIDTH, FOREGROUND};
use noto_sans_mono_bitmap::{get_raster, FontWeight, RasterHeight};

use crate::bootcfg;
use crate::emu::{self, Emu, Firmware};
use crate::judge::{clean_console, End};
use crate::limine;
use crate::runner::{absolute, spawn, stream_lines, wait_with_timeout};
use crate::scenarios;

/// The last console line before the machine halts (`scenario::exit` without an exit device).
const HALTED: &str = "umbra: halted";
/// How many of the log's last lines must be on the screen.
const LINES_CHECKED: usize = 3;
/// Largest difference per colour channel between the picture and the glyph (rounding, and
/// framebuffers with fewer bits per channel).
const TOLERANCE: u8 = 12;
const TIMEOUT_SECS: u64 = 120;

/// The machine the check boots, for step names.
pub fn machine_label() -> &'static str {
    "qemu (limine, uefi)"
}

/// Runs the check; `Ok` says what was found, `Err` why not.
pub fn check(build_dir: &Path) -> Result<String, String> {
    let build_dir = absolute(build_dir).map_err(|e| e.to_string())?;
    let parts = limine::Parts::find(&build_dir)?;
    let run_dir = build_dir.join("run").join("qemu-limine-uefi-screen");
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    let conf = run_dir.join("limine.conf");
    let cmdline = scenarios::cmdline_for(abi::scenario::KERNEL);
    fs::write(&conf, bootcfg::limine_run_cfg(&cmdline, &[])).map_err(|e| e.to_string())?;
    let iso = run_dir.join(limine::ISO);
    limine::build_iso(&parts, &conf, &iso)?;

    let socket = run_dir.join("monitor.sock");
    let ppm = run_dir.join("screen.ppm");
    let log_path = build_dir.join("serial-qemu-limine-uefi-screen.log");
    let mut cmd = emu::qemu_command(Emu::Qemu, &iso, None, Firmware::Uefi, Some(&socket));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    println!(
        "umbra-harness: booting {} on qemu (uefi) with `{cmdline}`; serial log {}",
        iso.display(),
        log_path.display()
    );
    let mut child = spawn(cmd, "qemu-system-x86_64").map_err(|e| e.0)?;
    let (halted_tx, halted_rx) = mpsc::channel();
    let (log_tx, log_rx) = mpsc::channel::<String>();
    let reader = stream_lines(child.stdout.take(), move |line| {
        let line = clean_console(line.as_bytes());
        println!("{line}");
        if line.trim_end() == HALTED {
            let _ = halted_tx.send(());
        }
        let _ = log_tx.send(line);
    });
    let halted = halted_rx
        .recv_timeout(Duration::from_secs(TIMEOUT_SECS))
        .is_ok();
    let dumped = if halted {
        screendump(&socket, &ppm)
    } else {
        Err(format!("no `{HALTED}` within {TIMEOUT_SECS} s"))
    };
    if let End::TimedOut(_) = wait_with_timeout(&mut child, 10) {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = reader.join();
    let log: Vec<String> = log_rx.try_iter().collect();
    let _ = fs::write(&log_path, log.join("\n") + "\n");
    dumped?;

    let picture = fs::read(&ppm).map_err(|e| format!("{}: {e}", ppm.display()))?;
    let screen = Ppm::parse(&picture)?;
    let expected = last_lines(&log, LINES_CHECKED)?;
    let row = find_lines(&screen, &expected)?;
    Ok(format!(
        "{} ({}x{}) shows the log's last {} lines at pixel row {row}: {:?}",
        ppm.display(),
        screen.width,
        screen.height,
        expected.len(),
        expected
    ))
}

/// Asks QEMU's monitor for a screendump into `ppm`, then to quit.
fn screendump(socket: &Path, ppm: &Path) -> Result<(), String> {
    let mut mon =
        UnixStream::connect(socket).map_err(|e| format!("monitor {}: {e}", socket.display()))?;
    mon.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    read_until(&mut mon, "(qemu)")?;
    // The monitor runs commands in order: once `info status` answers, the dump is written.
    writeln!(mon, "screendump {}", ppm.display()).map_err(|e| e.to_string())?;
    writeln!(mon, "info status").map_err(|e| e.to_string())?;
    read_until(&mut mon, "VM status")?;
    writeln!(mon, "quit").map_err(|e| e.to_string())?;
    // QEMU closes the socket as it exits.
    let _ = read_until(&mut mon, "\u{0}");
    if ppm.is_file() {
        Ok(())
    } else {
        Err(format!("QEMU wrote no {}", ppm.display()))
    }
}

/// Reads the monitor's output until it contains `want`.
fn read_until(mon: &mut UnixStream, want: &str) -> Result<(), String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = mon.read(&mut buf).map_err(|e| format!("monitor: {e}"))?;
        if n == 0 {
            return Err("monitor closed".into());
        }
        seen.extend_from_slice(&buf[..n]);
        if String::from_utf8_lossy(&seen).contains(want) {
            return Ok(());
        }
    }
}

/// The last `n` non-empty lines of the log, up to and including [`HALTED`].
fn last_lines(log: &[String], n: usize) -> Result<Vec<String>, String> {
    let end = log
        .iter()
        .rposition(|l| l.trim_end() == HALTED)
        .ok_or_else(|| format!("the serial log has no `{HALTED}`"))?;
    let mut lines: Vec<String> = log[..=end]
        .iter()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let from = lines.len().saturating_sub(n);
    lines.drain(..from);
    Ok(lines)
}

/// A binary PPM (P6, 8 bits per channel) as QEMU's `screendump` writes it.
pub struct Ppm {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Ppm {
    /// Parses a P6 image with a maximum value of 255.
    pub fn parse(data: &[u8]) -> Result<Ppm, String> {
        let mut fields = Vec::new();
        let mut at = 0;
        while fields.len() < 4 {
            while at < data.len() && data[at].is_ascii_whitespace() {
                at += 1;
            }
            if data.get(at) == Some(&b'#') {
                while at < data.len() && data[at] != b'\n' {
                    at += 1;
                }
                continue;
            }
            let start = at;
            while at < data.len() && !data[at].is_ascii_whitespace() {
                at += 1;
            }
            if start == at {
                return Err("PPM header cut short".into());
            }
            fields.push(String::from_utf8_lossy(&data[start..at]).into_owned());
        }
        at += 1; // the single whitespace byte after the maximum value
        let num = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| format!("PPM header field {s:?}"))
        };
        if fields[0] != "P6" || num(&fields[3])? != 255 {
            return Err(format!("not an 8-bit P6 PPM: {fields:?}"));
        }
        let (width, height) = (num(&fields[1])?, num(&fields[2])?);
        let len = width * height * 3;
        let rgb = data
            .get(at..at + len)
            .ok_or("PPM pixel data cut short")?
            .to_vec();
        Ok(Ppm { width, height, rgb })
    }

    fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

/// Whether `text` is drawn at pixel (0, `y`): every pixel of every glyph matches the glyph's
/// intensity blended between the console's colours.
fn line_at(screen: &Ppm, text: &str, y: usize) -> bool {
    if y + CELL_HEIGHT > screen.height || text.chars().count() * CELL_WIDTH > screen.width {
        return false;
    }
    text.chars().enumerate().all(|(col, c)| {
        let glyph = get_raster(c, FontWeight::Regular, RasterHeight::Size16)
            .or_else(|| get_raster('?', FontWeight::Regular, RasterHeight::Size16));
        let Some(glyph) = glyph else {
            return false;
        };
        glyph.rows().enumerate().all(|(dy, row)| {
            row.iter().enumerate().all(|(dx, &i)| {
                let want = |ch: usize| {
                    let (fg, bg) = (u32::from(FOREGROUND[ch]), u32::from(BACKGROUND[ch]));
                    ((fg * u32::from(i) + bg * (255 - u32::from(i))) / 255) as u8
                };
                let got = screen.pixel(col * CELL_WIDTH + dx, y + dy);
                (0..3).all(|ch| got[ch].abs_diff(want(ch)) <= TOLERANCE)
            })
        })
    })
}

/// The pixel row where `lines` start, drawn one under the other from the left edge.
fn find_lines(screen: &Ppm, lines: &[String]) -> Result<usize, String> {
    let Some(last) = lines.last() else {
        return Err("no lines to look for".into());
    };
    let span = (lines.len() - 1) * CELL_HEIGHT;
    for y in span..screen.height.saturating_sub(CELL_HEIGHT - 1) {
        if line_at(screen, last, y) {
            let top = y - span;
            let all = lines
                .iter()
                .enumerate()
                .all(|(k, l)| line_at(screen, l, top + k * CELL_HEIGHT));
            if all {
                return Ok(top);
            }
        }
    }
    let lit = screen
        .rgb
        .chunks_exact(3)
        .filter(|p| p.iter().any(|&v| v > 64))
        .count();
    Err(format!(
        "the screen ({}x{}, {lit} lit pixels) does not show {lines:?}",
        screen.width, screen.height
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use microkernel::fbtext::{Geometry, TextConsole};

    /// A screen drawn by the kernel's console code, as QEMU would dump it.
    fn drawn(text: &str) -> Ppm {
        let (width, height) = (CELL_WIDTH * 40, CELL_HEIGHT * 6);
        let g = Geometry {
            width,
            height,
            pitch: width * 4,
            bits_per_pixel: 32,
            red: (8, 16),
            green: (8, 8),
            blue: (8, 0),
        };
        let mut fb = vec![0u8; width * height * 4];
        let mut con = TextConsole::new();
        con.attach(g, &mut fb).unwrap();
        con.write_str(&mut fb, text);
        let rgb = fb
            .chunks_exact(4)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect();
        Ppm { width, height, rgb }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn finds_the_last_lines_where_the_console_drew_them() {
        let screen = drawn("boot\nkernel: 36 passed, 0 failed\numbra: exit 0\numbra: halted\n");
        let want = strings(&[
            "kernel: 36 passed, 0 failed",
            "umbra: exit 0",
            "umbra: halted",
        ]);
        assert_eq!(find_lines(&screen, &want), Ok(CELL_HEIGHT));
    }

    #[test]
    fn other_text_or_a_blank_screen_is_not_accepted() {
        let screen = drawn("kernel: 36 passed, 1 failed\numbra: exit 1\numbra: halted\n");
        let want = strings(&[
            "kernel: 36 passed, 0 failed",
            "umbra: exit 0",
            "umbra: halted",
        ]);
        assert!(find_lines(&screen, &want).is_err());
        let blank = drawn("");
        assert!(find_lines(&blank, &strings(&["umbra: halted"])).is_err());
    }

    #[test]
    fn ppm_round_trip_and_bad_headers() {
        let mut data = b"P6\n2 1\n255\n".to_vec();
        data.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let p = Ppm::parse(&data).unwrap();
        assert_eq!((p.width, p.height), (2, 1));
        assert_eq!(p.pixel(1, 0), [4, 5, 6]);
        assert!(Ppm::parse(b"P6\n2 1\n255\n\x01").is_err());
        assert!(Ppm::parse(b"P3\n1 1\n255\n1 2 3").is_err());
        assert!(Ppm::parse(b"P6\n").is_err());
    }

    #[test]
    fn last_lines_end_at_the_halt() {
        let log = strings(&["a", "", "b", "umbra: exit 0", "umbra: halted", "after"]);
        assert_eq!(
            last_lines(&log, 3).unwrap(),
            strings(&["b", "umbra: exit 0", "umbra: halted"])
        );
        assert!(last_lines(&strings(&["x"]), 3).is_err());
    }
}
