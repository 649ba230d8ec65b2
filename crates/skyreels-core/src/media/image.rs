//! Still images: loading any common format as RGB, and fitting them to the model's frame size.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ::image::imageops::{self, FilterType};
use ::image::{ImageReader, RgbImage};

use super::frame::{rgb_len, RgbFrame};
use crate::error::{invalid_input, Error, Result};

/// Loads a PNG, JPEG, WebP or GIF (first frame) file as RGB; alpha is dropped.
pub fn load_image(path: &Path) -> Result<RgbFrame> {
    let file = File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    // The format is sniffed from the content, so a mislabelled extension still loads.
    let reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let image = reader.decode().map_err(|e| invalid_input!("{} is not a readable image: {e}", path.display()))?;
    let rgb = image.to_rgb8();
    RgbFrame::new(rgb.width(), rgb.height(), rgb.into_raw())
}

/// Centre-crops `frame` to the aspect ratio of `width x height`, then resizes it (bicubic).
pub fn fit_to(frame: &RgbFrame, width: u32, height: u32) -> Result<RgbFrame> {
    frame.validate()?;
    rgb_len(width, height)?;
    let (crop_w, crop_h) = crop_size(frame.width, frame.height, width, height);
    let (x, y) = ((frame.width - crop_w) / 2, (frame.height - crop_h) / 2);
    let row_bytes = crop_w as usize * 3;
    let mut cropped = Vec::with_capacity(row_bytes * crop_h as usize);
    for row in y..y + crop_h {
        let start = (row as usize * frame.width as usize + x as usize) * 3;
        cropped.extend_from_slice(&frame.data[start..start + row_bytes]);
    }
    // Resampling an already-fitting image would still blur it slightly, so skip it.
    if (crop_w, crop_h) == (width, height) {
        return RgbFrame::new(width, height, cropped);
    }
    let cropped = RgbImage::from_raw(crop_w, crop_h, cropped)
        .ok_or_else(|| invalid_input!("cropped buffer does not match its size"))?;
    let resized = imageops::resize(&cropped, width, height, FilterType::CatmullRom);
    RgbFrame::new(width, height, resized.into_raw())
}

/// The largest centred `(w, h)` inside `src_w x src_h` with the aspect ratio `dst_w : dst_h`.
fn crop_size(src_w: u32, src_h: u32, dst_w: u32, dst_h: u32) -> (u32, u32) {
    let (sw, sh, dw, dh) = (u64::from(src_w), u64::from(src_h), u64::from(dst_w), u64::from(dst_h));
    if sw * dh > dw * sh {
        // Source is wider than the target: keep the full height, trim the sides.
        let w = (sh * dw + dh / 2) / dh;
        (w.clamp(1, sw) as u32, src_h)
    } else {
        let h = (sw * dh + dw / 2) / dw;
        (src_w, h.clamp(1, sh) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_keeps_the_target_aspect() {
        assert_eq!(crop_size(1920, 1080, 960, 544), (1906, 1080));
        assert_eq!(crop_size(1080, 1920, 960, 544), (1080, 612));
        assert_eq!(crop_size(640, 480, 640, 480), (640, 480));
    }

    #[test]
    fn fit_to_resizes_and_crops() {
        let data: Vec<u8> = (0..40 * 20 * 3).map(|i| (i % 251) as u8).collect();
        let frame = RgbFrame::new(40, 20, data).unwrap();
        let out = fit_to(&frame, 16, 16).unwrap();
        assert_eq!((out.width, out.height, out.data.len()), (16, 16, 16 * 16 * 3));
        // A same-size fit is an exact centre crop.
        let same = fit_to(&frame, 20, 20).unwrap();
        assert_eq!(same.pixel(0, 0), frame.pixel(10, 0));
        assert!(fit_to(&frame, 0, 16).is_err());
    }

    #[test]
    fn non_images_are_refused_with_the_file_name() {
        let dir = std::env::temp_dir().join(format!("media-image-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-an-image.png");
        std::fs::write(&path, b"hello, world").unwrap();
        let err = load_image(&path).unwrap_err().to_string();
        assert!(err.contains("not-an-image.png"), "{err}");
        assert!(load_image(&dir.join("missing.png")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
