//! A text console drawn on a linear framebuffer: the kernel's log on the screen of a machine
//! without a serial port. Glyphs come from `noto-sans-mono-bitmap` (pre-rasterised, 16 px
//! rows); the console keeps the characters it shows, wraps long lines, and scrolls by
//! [`SCROLL_DIVISOR`]ths of the screen at a time, redrawing only the cells that change (the
//! framebuffer is never read back: on real hardware and in emulators it is slow to read).
//!
//! Pure logic over a byte slice (the framebuffer's pixels), tested on the host.

use noto_sans_mono_bitmap::{get_raster, get_raster_width, FontWeight, RasterHeight};

const WEIGHT: FontWeight = FontWeight::Regular;
const HEIGHT: RasterHeight = RasterHeight::Size16;
/// Width of a character cell in pixels.
pub const CELL_WIDTH: usize = get_raster_width(WEIGHT, HEIGHT);
/// Height of a character cell in pixels.
pub const CELL_HEIGHT: usize = HEIGHT.val();
/// Most columns and rows used; a larger screen keeps a margin on the right and at the bottom.
pub const MAX_COLS: usize = 240;
pub const MAX_ROWS: usize = 90;
/// When the cursor passes the last row, the text moves up by `rows / SCROLL_DIVISOR` rows (at
/// least one): fewer, larger moves cost fewer redraws than one move per line.
pub const SCROLL_DIVISOR: usize = 4;
/// Text colour (light grey) and background (black), as 8-bit red, green, blue.
pub const FOREGROUND: [u8; 3] = [0xd0, 0xd0, 0xd0];
pub const BACKGROUND: [u8; 3] = [0, 0, 0];
/// Shown for characters the font does not have.
const REPLACEMENT: char = '?';

/// A framebuffer's layout: what the loader reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub width: usize,
    pub height: usize,
    /// Bytes from one pixel row to the next.
    pub pitch: usize,
    pub bits_per_pixel: u16,
    /// (size, shift) in bits of the red, green and blue fields of a pixel.
    pub red: (u8, u8),
    pub green: (u8, u8),
    pub blue: (u8, u8),
}

/// Why a framebuffer cannot carry the console.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FbError {
    /// Not 16, 24 or 32 bits per pixel.
    UnsupportedDepth(u16),
    /// A colour field wider than 8 bits or outside the pixel.
    BadColourField,
    /// Rows shorter than the width, or a buffer shorter than `pitch * height`.
    BadLayout,
    /// Not even one character cell fits.
    TooSmall,
}

impl Geometry {
    fn bytes_per_pixel(&self) -> usize {
        usize::from(self.bits_per_pixel / 8)
    }

    /// Checks the layout against a buffer of `len` bytes.
    pub fn validate(&self, len: usize) -> Result<(), FbError> {
        if !matches!(self.bits_per_pixel, 16 | 24 | 32) {
            return Err(FbError::UnsupportedDepth(self.bits_per_pixel));
        }
        for (size, shift) in [self.red, self.green, self.blue] {
            if size == 0 || size > 8 || u16::from(size) + u16::from(shift) > self.bits_per_pixel {
                return Err(FbError::BadColourField);
            }
        }
        let row = self.width.checked_mul(self.bytes_per_pixel());
        let total = self.pitch.checked_mul(self.height);
        match (row, total) {
            (Some(row), Some(total)) if row <= self.pitch && total <= len => {}
            _ => return Err(FbError::BadLayout),
        }
        if self.width < CELL_WIDTH || self.height < CELL_HEIGHT {
            return Err(FbError::TooSmall);
        }
        Ok(())
    }

    /// The pixel value for an RGB colour, as little-endian bytes.
    fn pixel(&self, rgb: [u8; 3]) -> [u8; 4] {
        let field = |v: u8, (size, shift): (u8, u8)| (u32::from(v) >> (8 - size)) << shift;
        let value = field(rgb[0], self.red) | field(rgb[1], self.green) | field(rgb[2], self.blue);
        value.to_le_bytes()
    }
}

/// The console's state: the characters on screen and the cursor. `const`-constructible so the
/// kernel can keep it in a static; [`TextConsole::attach`] sizes it for a framebuffer.
pub struct TextConsole {
    geometry: Option<Geometry>,
    cols: usize,
    rows: usize,
    col: usize,
    row: usize,
    cells: [[u8; MAX_COLS]; MAX_ROWS],
}

impl Default for TextConsole {
    fn default() -> Self {
        Self::new()
    }
}

impl TextConsole {
    /// A console with no framebuffer (writes do nothing).
    pub const fn new() -> Self {
        Self {
            geometry: None,
            cols: 0,
            rows: 0,
            col: 0,
            row: 0,
            cells: [[b' '; MAX_COLS]; MAX_ROWS],
        }
    }

    /// Takes over a framebuffer of layout `geometry` whose pixels are `fb`: clears it and puts
    /// the cursor top left.
    pub fn attach(&mut self, geometry: Geometry, fb: &mut [u8]) -> Result<(), FbError> {
        geometry.validate(fb.len())?;
        self.geometry = Some(geometry);
        self.cols = (geometry.width / CELL_WIDTH).min(MAX_COLS);
        self.rows = (geometry.height / CELL_HEIGHT).min(MAX_ROWS);
        self.col = 0;
        self.row = 0;
        self.cells = [[b' '; MAX_COLS]; MAX_ROWS];
        let bg = geometry.pixel(BACKGROUND);
        let bpp = geometry.bytes_per_pixel();
        for y in 0..geometry.height {
            let row = &mut fb[y * geometry.pitch..][..geometry.width * bpp];
            for px in row.chunks_exact_mut(bpp) {
                px.copy_from_slice(&bg[..bpp]);
            }
        }
        Ok(())
    }

    /// Columns and rows of text.
    pub fn size(&self) -> (usize, usize) {
        (self.cols, self.rows)
    }

    /// The text of row `row` as shown (trailing blanks included).
    pub fn row_text(&self, row: usize) -> &[u8] {
        &self.cells[row][..self.cols]
    }

    /// Writes `text` at the cursor: `\n` starts a new line, `\r` is ignored, a tab is a
    /// space, and anything the font lacks is shown as `?`.
    pub fn write_str(&mut self, fb: &mut [u8], text: &str) {
        let Some(geometry) = self.geometry else {
            return;
        };
        for c in text.chars() {
            match c {
                '\n' => self.newline(geometry, fb),
                '\r' => {}
                _ => {
                    if self.col == self.cols {
                        self.newline(geometry, fb);
                    }
                    let c = if c == '\t' { ' ' } else { c };
                    let byte = if c.is_ascii_graphic() || c == ' ' {
                        c as u8
                    } else {
                        REPLACEMENT as u8
                    };
                    self.set(geometry, fb, self.row, self.col, byte);
                    self.col += 1;
                }
            }
        }
    }

    fn newline(&mut self, geometry: Geometry, fb: &mut [u8]) {
        self.col = 0;
        self.row += 1;
        if self.row < self.rows {
            return;
        }
        let step = (self.rows / SCROLL_DIVISOR).max(1);
        for row in 0..self.rows {
            for col in 0..self.cols {
                let below = if row + step < self.rows {
                    self.cells[row + step][col]
                } else {
                    b' '
                };
                self.set(geometry, fb, row, col, below);
            }
        }
        self.row = self.rows - step;
    }

    /// Puts `byte` into a cell, drawing it only when the cell changes.
    fn set(&mut self, geometry: Geometry, fb: &mut [u8], row: usize, col: usize, byte: u8) {
        if self.cells[row][col] == byte {
            return;
        }
        self.cells[row][col] = byte;
        draw_glyph(geometry, fb, row, col, byte as char);
    }
}

/// Draws `c` into cell (`row`, `col`), blending foreground and background by the glyph's
/// intensity.
fn draw_glyph(geometry: Geometry, fb: &mut [u8], row: usize, col: usize, c: char) {
    let Some(glyph) =
        get_raster(c, WEIGHT, HEIGHT).or_else(|| get_raster(REPLACEMENT, WEIGHT, HEIGHT))
    else {
        return; // the font always has '?'
    };
    let bpp = geometry.bytes_per_pixel();
    let (x0, y0) = (col * CELL_WIDTH, row * CELL_HEIGHT);
    for (dy, intensities) in glyph.rows().enumerate() {
        let line = &mut fb[(y0 + dy) * geometry.pitch + x0 * bpp..][..CELL_WIDTH * bpp];
        for (px, &i) in line.chunks_exact_mut(bpp).zip(intensities) {
            let blend = |fg: u8, bg: u8| {
                ((u16::from(fg) * u16::from(i) + u16::from(bg) * (255 - u16::from(i))) / 255) as u8
            };
            let rgb = [
                blend(FOREGROUND[0], BACKGROUND[0]),
                blend(FOREGROUND[1], BACKGROUND[1]),
                blend(FOREGROUND[2], BACKGROUND[2]),
            ];
            px.copy_from_slice(&geometry.pixel(rgb)[..bpp]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xrgb(width: usize, height: usize) -> Geometry {
        Geometry {
            width,
            height,
            pitch: width * 4,
            bits_per_pixel: 32,
            red: (8, 16),
            green: (8, 8),
            blue: (8, 0),
        }
    }

    /// Whether cell (row, col) shows `c`: every pixel matches the glyph drawn alone.
    fn shows(g: Geometry, fb: &[u8], row: usize, col: usize, c: char) -> bool {
        let mut cell = vec![0u8; CELL_WIDTH * CELL_HEIGHT * 4];
        let one = Geometry {
            width: CELL_WIDTH,
            height: CELL_HEIGHT,
            pitch: CELL_WIDTH * 4,
            ..g
        };
        draw_glyph(one, &mut cell, 0, 0, c);
        (0..CELL_HEIGHT).all(|dy| {
            let at = (row * CELL_HEIGHT + dy) * g.pitch + col * CELL_WIDTH * 4;
            fb[at..at + CELL_WIDTH * 4] == cell[dy * CELL_WIDTH * 4..][..CELL_WIDTH * 4]
        })
    }

    #[test]
    fn layout_is_checked() {
        let g = xrgb(640, 480);
        assert_eq!(g.validate(640 * 480 * 4), Ok(()));
        assert_eq!(g.validate(640 * 480 * 4 - 1), Err(FbError::BadLayout));
        let narrow_pitch = Geometry { pitch: 100, ..g };
        assert_eq!(narrow_pitch.validate(1 << 30), Err(FbError::BadLayout));
        let deep = Geometry {
            bits_per_pixel: 8,
            ..g
        };
        assert_eq!(deep.validate(1 << 30), Err(FbError::UnsupportedDepth(8)));
        let wide_field = Geometry { red: (10, 20), ..g };
        assert_eq!(wide_field.validate(1 << 30), Err(FbError::BadColourField));
        let tiny = xrgb(4, 4);
        assert_eq!(tiny.validate(64), Err(FbError::TooSmall));
        let huge = Geometry {
            pitch: usize::MAX,
            ..g
        };
        assert_eq!(huge.validate(usize::MAX), Err(FbError::BadLayout));
    }

    #[test]
    fn pixel_values_follow_the_colour_fields() {
        let g = xrgb(64, 64);
        assert_eq!(g.pixel([0x12, 0x34, 0x56]), [0x56, 0x34, 0x12, 0]);
        let bgr565 = Geometry {
            bits_per_pixel: 16,
            red: (5, 11),
            green: (6, 5),
            blue: (5, 0),
            ..g
        };
        assert_eq!(bgr565.pixel([0xff, 0, 0]), [0x00, 0xf8, 0, 0]);
        assert_eq!(bgr565.pixel([0, 0, 0xff]), [0x1f, 0, 0, 0]);
    }

    #[test]
    fn text_lands_in_cells_and_wraps() {
        let g = xrgb(CELL_WIDTH * 10, CELL_HEIGHT * 4);
        let mut fb = vec![0xaau8; g.pitch * g.height];
        let mut con = TextConsole::new();
        con.attach(g, &mut fb).unwrap();
        assert!(fb.iter().all(|&b| b == 0), "attach clears the screen");
        assert_eq!(con.size(), (10, 4));
        con.write_str(&mut fb, "umbra: exit 0\r\nok\té");
        assert_eq!(con.row_text(0), b"umbra: exi");
        assert_eq!(con.row_text(1), b"t 0       ");
        assert_eq!(con.row_text(2), b"ok ?      ");
        for (col, c) in "umbra: exi".chars().enumerate() {
            assert!(shows(g, &fb, 0, col, c), "cell 0,{col} shows {c:?}");
        }
        assert!(shows(g, &fb, 2, 3, '?'));
        assert!(!shows(g, &fb, 2, 3, 'o'));
    }

    #[test]
    fn scrolls_by_a_quarter_and_redraws_the_moved_text() {
        let g = xrgb(CELL_WIDTH * 8, CELL_HEIGHT * 8);
        let mut fb = vec![0u8; g.pitch * g.height];
        let mut con = TextConsole::new();
        con.attach(g, &mut fb).unwrap();
        for i in 0..8 {
            con.write_str(&mut fb, &format!("line {i}\n"));
        }
        // The eighth newline passed the last row: the text moved up by 8 / 4 = 2 rows.
        assert_eq!(con.row_text(0), b"line 2  ");
        assert_eq!(con.row_text(5), b"line 7  ");
        assert_eq!(con.row_text(6), b"        ");
        assert!(shows(g, &fb, 0, 5, '2'));
        assert!(shows(g, &fb, 5, 5, '7'));
        assert!(shows(g, &fb, 7, 0, ' '));
        con.write_str(&mut fb, "next");
        assert_eq!(con.row_text(6), b"next    ");
        assert!(shows(g, &fb, 6, 0, 'n'));
    }

    #[test]
    fn rows_beyond_the_margin_stay_untouched() {
        let g = Geometry {
            pitch: CELL_WIDTH * 3 * 4 + 12,
            ..xrgb(CELL_WIDTH * 3 + 3, CELL_HEIGHT * 2 + 5)
        };
        let mut fb = vec![0x55u8; g.pitch * g.height];
        let mut con = TextConsole::new();
        con.attach(g, &mut fb).unwrap();
        con.write_str(&mut fb, "abcdefghijklmnop\n\n\n");
        // The padding at the end of each row (pitch beyond width) is never written.
        for y in 0..g.height {
            assert!(fb[y * g.pitch + g.width * 4..(y + 1) * g.pitch]
                .iter()
                .all(|&b| b == 0x55));
        }
    }

    #[test]
    fn without_a_framebuffer_writes_do_nothing() {
        let mut con = TextConsole::new();
        let mut fb = [0u8; 16];
        con.write_str(&mut fb, "text\n");
        assert_eq!(con.size(), (0, 0));
        assert_eq!(fb, [0u8; 16]);
    }
}
