//! RGB → YUV 4:2:0 conversion for the H.264 encoder.
//!
//! Written here rather than taken from openh264 so the encoder input is plain integer math:
//! rounded (not truncated) BT.601 limited range, identical on every CPU, which the
//! bit-identical resume of MP4 files relies on. The decoder side (openh264) uses the same matrix.

use super::frame::RgbFrame;

/// Converts an even-sized frame to planar I420 (`Y` plane, then `U`, then `V`).
pub(crate) fn rgb_to_i420(frame: &RgbFrame) -> Vec<u8> {
    let (w, h) = (frame.width as usize, frame.height as usize);
    let (cw, ch) = (w / 2, h / 2);
    let mut out = vec![0u8; w * h + 2 * cw * ch];
    let (y_plane, uv) = out.split_at_mut(w * h);
    let (u_plane, v_plane) = uv.split_at_mut(cw * ch);
    for (y_row, rgb_row) in y_plane.chunks_exact_mut(w).zip(frame.data.chunks_exact(w * 3)) {
        for (y, px) in y_row.iter_mut().zip(rgb_row.chunks_exact(3)) {
            let (r, g, b) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
            *y = ((66 * r + 129 * g + 25 * b + 128) >> 8) as u8 + 16;
        }
    }
    for cy in 0..ch {
        for cx in 0..cw {
            let [r, g, b] = block_sum(frame, cx * 2, cy * 2);
            // Sums of four pixels: the extra >> 2 averages them, with rounding.
            u_plane[cy * cw + cx] = (((-38 * r - 74 * g + 112 * b + 512) >> 10) + 128) as u8;
            v_plane[cy * cw + cx] = (((112 * r - 94 * g - 18 * b + 512) >> 10) + 128) as u8;
        }
    }
    out
}

/// Per-channel sums of the 2x2 block whose top-left pixel is `(x, y)`.
fn block_sum(frame: &RgbFrame, x: usize, y: usize) -> [i32; 3] {
    let w = frame.width as usize;
    let mut sum = [0i32; 3];
    for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        let i = ((y + dy) * w + x + dx) * 3;
        for (total, &value) in sum.iter_mut().zip(&frame.data[i..i + 3]) {
            *total += i32::from(value);
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greys_and_primaries_map_to_bt601_limited_range() {
        let frame = |rgb: [u8; 3]| RgbFrame::new(2, 2, rgb.repeat(4)).unwrap();
        assert_eq!(rgb_to_i420(&frame([0, 0, 0])), [16, 16, 16, 16, 128, 128]);
        assert_eq!(rgb_to_i420(&frame([255, 255, 255])), [235, 235, 235, 235, 128, 128]);
        assert_eq!(rgb_to_i420(&frame([255, 0, 0]))[4..], [90, 240]);
    }
}
