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

/// Fits `frame` inside `width x height` keeping its aspect ratio (Lanczos), centred on white:
/// how SkyReels-V3 prepares reference images (`resize_ref_images`), so nothing of a character or
/// product is cropped away.
pub fn letterbox(frame: &RgbFrame, width: u32, height: u32) -> Result<RgbFrame> {
    frame.validate()?;
    rgb_len(width, height)?;
    let (fw, fh) = (u64::from(frame.width), u64::from(frame.height));
    // Upstream truncates the scaled side (`int(w / ratio)`); an image is never scaled to nothing.
    let (new_w, new_h) = if fw * u64::from(height) > u64::from(width) * fh {
        (width, ((u64::from(width) * fh / fw) as u32).max(1))
    } else {
        (((u64::from(height) * fw / fh) as u32).max(1), height)
    };
    let source = RgbImage::from_raw(frame.width, frame.height, frame.data.clone())
        .ok_or_else(|| invalid_input!("image buffer does not match its size"))?;
    let resized = if (new_w, new_h) == (frame.width, frame.height) {
        source
    } else {
        imageops::resize(&source, new_w, new_h, FilterType::Lanczos3)
    };
    let mut canvas = RgbImage::from_pixel(width, height, ::image::Rgb([255, 255, 255]));
    imageops::replace(&mut canvas, &resized, i64::from((width - new_w) / 2), i64::from((height - new_h) / 2));
    RgbFrame::new(width, height, canvas.into_raw())
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
    fn letterbox_pads_with_white_and_keeps_the_aspect() {
        // A black 40x20 image in a 16x16 frame: 16x8 of black, centred, white above and below.
        let frame = RgbFrame::new(40, 20, vec![0; 40 * 20 * 3]).unwrap();
        let out = letterbox(&frame, 16, 16).unwrap();
        assert_eq!((out.width, out.height), (16, 16));
        assert_eq!(out.pixel(8, 0), [255, 255, 255]);
        assert_eq!(out.pixel(8, 3), [255, 255, 255]);
        assert_eq!(out.pixel(8, 4), [0, 0, 0]);
        assert_eq!(out.pixel(8, 11), [0, 0, 0]);
        assert_eq!(out.pixel(8, 12), [255, 255, 255]);
        // A tall image is padded at the sides; odd padding puts the extra column on the right.
        let tall = RgbFrame::new(10, 30, vec![0; 10 * 30 * 3]).unwrap();
        let out = letterbox(&tall, 16, 15).unwrap();
        // 10x30 → 5x15, 11 columns of padding: 5 on the left, 6 on the right.
        assert_eq!(out.pixel(4, 7), [255, 255, 255]);
        assert_eq!(out.pixel(5, 7), [0, 0, 0]);
        assert_eq!(out.pixel(9, 7), [0, 0, 0]);
        assert_eq!(out.pixel(10, 7), [255, 255, 255]);
    }

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
