//! Round trips, crash recovery and resume determinism for every writer and reader.

use std::fs;
use std::path::{Path, PathBuf};

use super::*;

/// A scratch directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("media-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A gradient with a coloured square that moves with `t`.
fn pattern(width: u32, height: u32, t: u32) -> RgbFrame {
    let side = height / 3;
    let (sx, sy) = ((t * 7) % (width - side), (t * 3) % (height - side));
    let mut data = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            let inside = (sx..sx + side).contains(&x) && (sy..sy + side).contains(&y);
            let px = if inside {
                [230, 40, 30 + (t * 10 % 200) as u8]
            } else {
                [(x * 255 / width) as u8, (y * 255 / height) as u8, 96]
            };
            data.extend_from_slice(&px);
        }
    }
    RgbFrame::new(width, height, data).unwrap()
}

fn frames(width: u32, height: u32, range: std::ops::Range<u32>) -> Vec<RgbFrame> {
    range.map(|t| pattern(width, height, t)).collect()
}

fn mean_abs_error(a: &RgbFrame, b: &RgbFrame) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let sum: u64 = a.data.iter().zip(&b.data).map(|(&x, &y)| u64::from(x.abs_diff(y))).sum();
    sum as f64 / a.data.len() as f64
}

fn read_all(path: &Path) -> Vec<RgbFrame> {
    open_video(path).unwrap().collect::<Result<Vec<_>>>().unwrap()
}

/// Writes `chunks` with one commit each, then finishes.
fn write_chunks(path: &Path, width: u32, height: u32, fps: f64, chunks: &[Vec<RgbFrame>]) -> Vec<WriterCheckpoint> {
    let mut writer = create_writer(path, width, height, fps).unwrap();
    let checkpoints = chunks
        .iter()
        .map(|chunk| {
            writer.append(chunk).unwrap();
            writer.commit().unwrap()
        })
        .collect();
    writer.finish().unwrap();
    checkpoints
}

fn chunks(width: u32, height: u32) -> Vec<Vec<RgbFrame>> {
    vec![frames(width, height, 0..5), frames(width, height, 5..9), frames(width, height, 9..14)]
}

fn check_round_trip(name: &str, fps: f64, max_error: f64, expected_fps: Option<f64>) {
    let dir = TempDir::new(&format!("round-trip-{name}"));
    let path = dir.join(name);
    let (w, h) = (96, 64);
    let chunks = chunks(w, h);
    write_chunks(&path, w, h, fps, &chunks);
    let reader = open_video(&path).unwrap();
    assert_eq!((reader.width(), reader.height()), (w, h));
    assert_eq!(reader.frame_count(), Some(14));
    match (reader.fps(), expected_fps) {
        (Some(got), Some(want)) => assert!((got - want).abs() < 1e-6, "fps {got} != {want}"),
        (got, want) => assert_eq!(got, want),
    }
    let decoded = reader.collect::<Result<Vec<_>>>().unwrap();
    assert_eq!(decoded.len(), 14);
    for (original, copy) in chunks.iter().flatten().zip(&decoded) {
        let error = mean_abs_error(original, copy);
        assert!(error <= max_error, "{name}: mean abs error {error} > {max_error}");
    }
}

#[test]
fn mp4_round_trip() {
    check_round_trip("video.mp4", 24.0, 6.0, Some(24.0));
}

#[test]
fn gif_round_trip() {
    // 24 fps is not a whole number of centiseconds; cumulative rounding keeps the average.
    check_round_trip("video.gif", 24.0, 6.0, Some(14.0 * 100.0 / 58.0));
    check_round_trip("video25.gif", 25.0, 6.0, Some(25.0));
}

#[test]
fn png_folder_round_trip_is_lossless() {
    check_round_trip("frames", 24.0, 0.0, None);
}

#[test]
fn mp4_survives_a_crash_after_a_commit() {
    let dir = TempDir::new("mp4-crash");
    let path = dir.join("video.mp4");
    let (w, h) = (64, 48);
    let chunks = chunks(w, h);
    let mut writer = create_writer(&path, w, h, 24.0).unwrap();
    writer.append(&chunks[0]).unwrap();
    writer.commit().unwrap();
    writer.publish().unwrap();
    writer.append(&chunks[1]).unwrap();
    let second = writer.commit().unwrap();
    // Appended but never committed: a copy taken now is what a kill would leave.
    writer.append(&chunks[2]).unwrap();
    let snapshot = dir.join("snapshot.mp4");
    fs::copy(&path, &snapshot).unwrap();
    assert_eq!(read_all(&snapshot).len(), 9);

    writer.commit().unwrap();
    drop(writer);
    let full = fs::read(&path).unwrap();
    // Cut anywhere inside the last fragment (moof or mdat): the first two commits survive.
    let start = second.bytes as usize;
    for cut in [start + 1, start + 7, start + 40, (start + full.len()) / 2, full.len() - 1] {
        fs::write(&snapshot, &full[..cut]).unwrap();
        // Samples of the cut fragment that were completely written may be returned as well.
        let reader = open_video(&snapshot).unwrap();
        assert!((reader.fps().unwrap() - 24.0).abs() < 1e-9, "fps of the surviving frames");
        let count = reader.collect::<Result<Vec<_>>>().unwrap().len();
        assert!((9..14).contains(&count), "cut at {cut} of {}: {count} frames", full.len());
    }
    // Garbage after the last fragment is ignored as well.
    let mut garbage = full.clone();
    garbage.extend((0..100u32).map(|i| (i * 37 % 251) as u8));
    fs::write(&snapshot, &garbage).unwrap();
    assert_eq!(read_all(&snapshot).len(), 14);
}

#[test]
fn gif_survives_a_crash_mid_commit() {
    let dir = TempDir::new("gif-crash");
    let path = dir.join("video.gif");
    let checkpoints = write_chunks(&path, 64, 48, 20.0, &chunks(64, 48));
    let full = fs::read(&path).unwrap();
    let cut = (checkpoints[1].bytes as usize + full.len()) / 2;
    fs::write(&path, &full[..cut]).unwrap();
    // Complete frames of the interrupted commit are readable too; the partial one is not.
    let count = read_all(&path).len();
    assert!((9..14).contains(&count), "{count} frames");
}

/// Uninterrupted writing vs. two commits, a kill with frames pending and half-written bytes,
/// and a resume: the results must be byte-identical.
fn check_resume(name: &str) {
    let dir = TempDir::new(&format!("resume-{name}"));
    let (w, h) = (64, 48);
    let chunks = chunks(w, h);
    let straight = dir.join(&format!("straight-{name}"));
    write_chunks(&straight, w, h, 24.0, &chunks);

    let resumed = dir.join(&format!("resumed-{name}"));
    let mut writer = create_writer(&resumed, w, h, 24.0).unwrap();
    writer.append(&chunks[0]).unwrap();
    writer.commit().unwrap();
    writer.append(&chunks[1]).unwrap();
    let checkpoint = writer.commit().unwrap();
    writer.publish().unwrap();
    writer.append(&chunks[2][..2]).unwrap();
    drop(writer);
    if resumed.is_file() {
        // A commit that died half-way through its write.
        let mut bytes = fs::read(&resumed).unwrap();
        bytes.extend_from_slice(&[0x5a; 333]);
        fs::write(&resumed, bytes).unwrap();
    }
    // The checkpoint travels through JSON, as it would in a job file.
    let json = serde_json::to_string(&checkpoint).unwrap();
    let checkpoint: WriterCheckpoint = serde_json::from_str(&json).unwrap();
    let mut writer = resume_writer(&resumed, w, h, 24.0, &checkpoint).unwrap();
    assert_eq!(writer.frames_written(), 9);
    writer.append(&chunks[2]).unwrap();
    writer.commit().unwrap();
    writer.finish().unwrap();

    assert_eq!(snapshot(&straight), snapshot(&resumed), "{name}: resumed output differs");
}

/// File bytes, or for a folder each file's name and bytes.
fn snapshot(path: &Path) -> Vec<(String, Vec<u8>)> {
    if path.is_file() {
        return vec![(String::new(), fs::read(path).unwrap())];
    }
    let mut files: Vec<_> = fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn mp4_resume_is_byte_identical() {
    check_resume("video.mp4");
}

#[test]
fn gif_resume_is_byte_identical() {
    check_resume("video.gif");
}

#[test]
fn png_folder_resume_is_byte_identical() {
    check_resume("frames");
}

#[test]
fn resume_refuses_a_mismatched_file() {
    let dir = TempDir::new("resume-mismatch");
    let path = dir.join("video.mp4");
    let checkpoints = write_chunks(&path, 64, 48, 24.0, &chunks(64, 48)[..1]);
    assert!(resume_writer(&path, 96, 48, 24.0, &checkpoints[0]).is_err());
    assert!(resume_writer(&dir.join("video.gif"), 64, 48, 24.0, &checkpoints[0]).is_err());
    let beyond = WriterCheckpoint { bytes: checkpoints[0].bytes + 1, ..checkpoints[0] };
    assert!(resume_writer(&path, 64, 48, 24.0, &beyond).is_err());
}

#[test]
fn bad_sizes_and_formats_are_refused() {
    let dir = TempDir::new("bad-settings");
    let err = create_writer(&dir.join("odd.mp4"), 63, 48, 24.0).err().unwrap().to_string();
    assert!(err.contains("even"), "{err}");
    assert!(create_writer(&dir.join("video.avi"), 64, 48, 24.0).is_err());
    assert!(create_writer(&dir.join("video.gif"), 64, 48, 60.0).is_err());
    assert!(create_writer(&dir.join("video.mp4"), 64, 48, 0.0).is_err());
    let mut writer = create_writer(&dir.join("video.mp4"), 64, 48, 24.0).unwrap();
    assert!(writer.append(&[pattern(32, 48, 0)]).is_err());
}

#[test]
fn corrupt_inputs_are_errors_not_panics() {
    let dir = TempDir::new("corrupt");
    let cases: [(&str, Vec<u8>); 5] = [
        ("empty.mp4", Vec::new()),
        ("noise.mp4", (0..4096u32).map(|i| (i * 7919 % 256) as u8).collect()),
        ("fake-box.mp4", [&[0, 0, 0, 16][..], b"ftypisom", &[0; 4], &[0, 0, 0, 9], b"moov", &[1]].concat()),
        ("fake.gif", b"GIF89a\x10\x00\x10\x00garbage".to_vec()),
        ("text.png", b"not a picture".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        if let Ok(reader) = open_video(&path) {
            // Opening may succeed on a GIF header; decoding must then fail or end cleanly.
            assert!(reader.take(10).all(|f| f.is_err()), "{name}");
        }
    }
    assert!(open_video(&dir.join("missing.mp4")).is_err());
}

#[test]
fn other_codecs_are_named_in_the_error() {
    let dir = TempDir::new("codec");
    let path = dir.join("video.mp4");
    write_chunks(&path, 64, 48, 24.0, &chunks(64, 48)[..1]);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.windows(4).position(|w| w == b"avc1").unwrap();
    // The first "avc1" is the ftyp brand; patch the sample entry instead.
    let at = at + 4 + bytes[at + 4..].windows(4).position(|w| w == b"avc1").unwrap();
    bytes[at..at + 4].copy_from_slice(b"hvc1");
    fs::write(&path, bytes).unwrap();
    let err = open_video(&path).err().unwrap().to_string();
    assert!(err.contains("hvc1"), "{err}");
}

/// Tiny files made by ffmpeg, to check we read what other tools write (see testdata/README.md).
const X264_BFRAMES_MP4: &[u8] = include_bytes!("testdata/x264_bframes.mp4");
const FFMPEG_GIF: &[u8] = include_bytes!("testdata/moving_square.gif");

#[test]
fn reads_x264_b_frames_in_display_order() {
    let dir = TempDir::new("x264");
    let path = dir.join("x264.mp4");
    fs::write(&path, X264_BFRAMES_MP4).unwrap();
    let reader = open_video(&path).unwrap();
    assert_eq!((reader.width(), reader.height(), reader.frame_count()), (64, 48, Some(10)));
    assert!((reader.fps().unwrap() - 10.0).abs() < 1e-9);
    let decoded = reader.collect::<Result<Vec<_>>>().unwrap();
    assert_eq!(decoded.len(), 10);
    // Frame n was encoded with luma 20 * n (plus texture): brightness must rise in display order
    // (frame 0 is below video black, hence the small first step).
    let brightness: Vec<f64> =
        decoded.iter().map(|f| f.data.iter().map(|&v| f64::from(v)).sum::<f64>() / f.data.len() as f64).collect();
    assert!(brightness.windows(2).all(|w| w[1] > w[0] + 5.0), "{brightness:?}");
}

#[test]
fn reads_ffmpeg_gif_with_partial_frames() {
    let dir = TempDir::new("ffmpeg-gif");
    let path = dir.join("square.gif");
    fs::write(&path, FFMPEG_GIF).unwrap();
    let reader = open_video(&path).unwrap();
    assert_eq!((reader.width(), reader.height(), reader.frame_count()), (48, 32, Some(8)));
    assert!((reader.fps().unwrap() - 10.0).abs() < 1e-9);
    let decoded = reader.collect::<Result<Vec<_>>>().unwrap();
    assert_eq!(decoded.len(), 8);
    // Frame n is a white 8x8 square at (4n + 4, 8) on black; ffmpeg stores only changed rectangles.
    for (n, frame) in decoded.iter().enumerate() {
        for y in 0..32 {
            for x in 0..48 {
                let left = 4 * n as u32 + 4;
                let inside = (left..left + 8).contains(&x) && (8..16).contains(&y);
                // ffmpeg's default GIF palette is 3-3-2 bit RGB, so white comes back as (252, 252, 170).
                let px = frame.pixel(x, y);
                let ok = if inside { px.iter().all(|&v| v > 128) } else { px == [0, 0, 0] };
                assert!(ok, "frame {n} at ({x}, {y}): {px:?}");
            }
        }
    }
}

/// Truncates and overwrites bytes of `name`'s first `region(bytes)` bytes; reading must never panic.
fn check_damage(name: &str, region: impl Fn(&[u8]) -> usize) {
    let dir = TempDir::new(&format!("damage-{name}"));
    let path = dir.join(name);
    write_chunks(&path, 64, 48, 20.0, &chunks(64, 48));
    let original = fs::read(&path).unwrap();
    let end = region(&original);
    let damaged = dir.join(&format!("damaged-{name}"));
    let try_read = |bytes: &[u8]| {
        fs::write(&damaged, bytes).unwrap();
        if let Ok(reader) = open_video(&damaged) {
            reader.for_each(drop);
        }
    };
    for cut in 0..end {
        try_read(&original[..cut]);
    }
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..300 {
        // xorshift64: a fixed pseudo-random sequence of (position, value) pairs.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut bytes = original.clone();
        bytes[(seed % end as u64) as usize] = (seed >> 40) as u8;
        try_read(&bytes);
    }
}

#[test]
fn damaged_mp4_boxes_never_panic() {
    // Up to the first sample data: what the box parser, not the H.264 decoder, reads.
    check_damage("video.mp4", |bytes| bytes.windows(4).position(|w| w == b"mdat").unwrap() + 4);
}

#[test]
fn damaged_gif_never_panics() {
    // Header, first frame descriptor and the start of its pixel data.
    check_damage("video.gif", |bytes| bytes.len().min(1000));
}

/// A kill after a commit whose checkpoint was never saved (the state still names the previous
/// one): the resume cuts back to the saved checkpoint and continues byte-identically. For a
/// GIF the saved checkpoint's trailer byte has been overwritten by then.
#[test]
fn resume_from_an_older_checkpoint_than_the_last_commit() {
    for name in ["video.gif", "video.mp4"] {
        let dir = TempDir::new(&format!("older-checkpoint-{name}"));
        let (w, h) = (64, 48);
        let chunks = chunks(w, h);
        let straight = dir.join(&format!("straight-{name}"));
        write_chunks(&straight, w, h, 24.0, &chunks);

        let resumed = dir.join(name);
        let mut writer = create_writer(&resumed, w, h, 24.0).unwrap();
        writer.append(&chunks[0]).unwrap();
        let saved = writer.commit().unwrap();
        writer.publish().unwrap();
        writer.append(&chunks[1]).unwrap();
        writer.commit().unwrap(); // committed, but its checkpoint is lost with the process
        drop(writer);
        verify_checkpoint(&resumed, &saved).unwrap();
        let mut writer = resume_writer(&resumed, w, h, 24.0, &saved).unwrap();
        for chunk in &chunks[1..] {
            writer.append(chunk).unwrap();
            writer.commit().unwrap();
        }
        writer.finish().unwrap();
        assert_eq!(snapshot(&straight), snapshot(&resumed), "{name}");
    }
}

/// A checkpoint applied to another file (or to one changed since) is refused, and the file is
/// left exactly as it was.
#[test]
fn checkpoints_only_fit_their_own_file() {
    for name in ["video.gif", "video.mp4"] {
        let dir = TempDir::new(&format!("foreign-checkpoint-{name}"));
        let (w, h) = (64, 48);
        let chunks = chunks(w, h);
        let ours = dir.join(&format!("ours-{name}"));
        let checkpoints = write_chunks(&ours, w, h, 24.0, &chunks[..2]);
        // Another video of the same size: same header, different frames.
        let theirs = dir.join(name);
        let mut other: Vec<Vec<RgbFrame>> = chunks.clone();
        other.swap(0, 1);
        write_chunks(&theirs, w, h, 24.0, &other);
        let before = fs::read(&theirs).unwrap();
        assert!(verify_checkpoint(&theirs, &checkpoints[0]).is_err(), "{name}");
        let err = resume_writer(&theirs, w, h, 24.0, &checkpoints[0]).err().unwrap().to_string();
        assert!(err.contains("not the video its resume state was saved with"), "{err}");
        assert_eq!(fs::read(&theirs).unwrap(), before, "{name} was changed");
    }
}

/// A new file replaces an existing one only once it holds frames, by rename: the old inode (a
/// hard link elsewhere, say) is never written.
#[test]
fn new_files_are_written_aside_and_renamed_in() {
    for name in ["video.gif", "video.mp4"] {
        let dir = TempDir::new(&format!("aside-{name}"));
        let (w, h) = (64, 48);
        let chunks = chunks(w, h);
        let input = dir.join(&format!("input-{name}"));
        write_chunks(&input, w, h, 24.0, &chunks[..1]);
        let original = fs::read(&input).unwrap();
        let output = dir.join(name);
        fs::hard_link(&input, &output).unwrap();
        let mut writer = create_writer(&output, w, h, 24.0).unwrap();
        writer.commit().unwrap();
        assert_eq!(fs::read(&output).unwrap(), original, "{name}: replaced before holding frames");
        writer.append(&chunks[1]).unwrap();
        writer.commit().unwrap();
        assert_eq!(fs::read(&output).unwrap(), original, "{name}: replaced before being published");
        writer.publish().unwrap();
        assert_ne!(fs::read(&output).unwrap(), original);
        writer.finish().unwrap();
        assert_eq!(fs::read(&input).unwrap(), original, "{name}: the hard-linked input changed");
        assert_eq!(read_all(&output).len(), chunks[1].len());
        // A writer abandoned before its first frames leaves nothing behind.
        let abandoned = dir.join(&format!("abandoned-{name}"));
        drop(create_writer(&abandoned, w, h, 24.0).unwrap());
        let names: Vec<String> =
            fs::read_dir(&dir.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(!names.iter().any(|n| n.contains("abandoned")), "{names:?}");
    }
}
