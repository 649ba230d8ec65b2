//! The one pixel container of the media module: a packed 8-bit RGB frame.

use crate::error::{invalid_input, Result};

/// One image or video frame: 8-bit RGB, row-major, no row padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbFrame {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes, `[r, g, b]` per pixel, top row first.
    pub data: Vec<u8>,
}

impl RgbFrame {
    /// Wraps `data`, checking it holds exactly `width * height` RGB pixels.
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Result<Self> {
        let frame = Self { width, height, data };
        frame.validate()?;
        Ok(frame)
    }

    /// Checks the frame is non-empty and its buffer matches its size (the fields are public).
    pub fn validate(&self) -> Result<()> {
        let expected = rgb_len(self.width, self.height)?;
        if self.data.len() != expected {
            return Err(invalid_input!(
                "a {}x{} RGB frame needs {expected} bytes, got {}",
                self.width,
                self.height,
                self.data.len()
            ));
        }
        Ok(())
    }

    /// The `[r, g, b]` value at column `x`, row `y`; panics outside the frame, like indexing.
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        assert!(x < self.width && y < self.height, "pixel ({x}, {y}) outside {}x{}", self.width, self.height);
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// Byte length of a `width x height` RGB buffer; refuses empty or address-space-sized frames.
pub(crate) fn rgb_len(width: u32, height: u32) -> Result<usize> {
    if width == 0 || height == 0 {
        return Err(invalid_input!("frame size {width}x{height} is empty"));
    }
    (width as usize)
        .checked_mul(height as usize)
        .and_then(|n| n.checked_mul(3))
        .ok_or_else(|| invalid_input!("frame size {width}x{height} is too large"))
}
