//! A fragmented-MP4 writer for one H.264 track.
//!
//! The file starts with `ftyp` + `moov` (empty sample tables, `mvex`), and every commit appends
//! one `moof` + `mdat` fragment with a single write followed by an fsync. A crash can therefore
//! only ever leave a partial *last* fragment behind, which readers ignore and `resume` cuts off.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::h264::{encoder_config_record, AvcConfig, EncodedFrame, FragmentEncoder};
use super::{
    check_frames, check_prefix, continue_crc, io_error, write_error, Aside, RgbFrame, VideoFormat, VideoWriter,
    WriterCheckpoint,
};
use crate::error::{invalid_input, Result};

/// Ticks per frame; the timescale is `fps * 1000` so rates like 23.976 stay exact.
const SAMPLE_DURATION: u32 = 1000;
/// The only track's id.
const TRACK_ID: u32 = 1;
/// Sample flags of a keyframe: depends on no other sample.
const SYNC_FLAGS: u32 = 0x0200_0000;
/// Sample flags of a P-frame: depends on others, not a sync sample.
const NON_SYNC_FLAGS: u32 = 0x0101_0000;
/// openh264's limit, checked up front for a clearer message.
const MAX_LONG_SIDE: u32 = 3840;
const MAX_SHORT_SIDE: u32 = 2160;

/// Writes H.264 frames into a fragmented MP4, one fragment per commit.
pub(crate) struct Mp4Writer {
    file: File,
    path: PathBuf,
    width: u32,
    height: u32,
    fps: f64,
    /// The encoder of the fragment being built; `None` between fragments.
    encoder: Option<FragmentEncoder>,
    pending: Vec<EncodedFrame>,
    checkpoint: WriterCheckpoint,
    /// Set until the file holds frames and replaces its target.
    aside: Option<Aside>,
}

impl Mp4Writer {
    /// Creates or truncates `path` and writes the init segment (`ftyp` + `moov`).
    pub(crate) fn create(path: &Path, width: u32, height: u32, fps: f64) -> Result<Self> {
        let header = init_segment(width, height, fps)?;
        let aside = Aside::new(path);
        let partial = aside.partial();
        let mut file = File::create(partial).map_err(write_error(partial))?;
        file.write_all(&header).and_then(|()| file.sync_all()).map_err(write_error(partial))?;
        let checkpoint = WriterCheckpoint {
            format: VideoFormat::Mp4,
            bytes: header.len() as u64,
            frames: 0,
            fragments: 0,
            prefix_crc: continue_crc(0, &header),
        };
        Ok(Self { aside: Some(aside), ..Self::new(file, path, width, height, fps, checkpoint) })
    }

    /// Reopens a file this writer made with the same settings and cuts it back to `checkpoint`.
    pub(crate) fn resume(
        path: &Path,
        width: u32,
        height: u32,
        fps: f64,
        checkpoint: &WriterCheckpoint,
    ) -> Result<Self> {
        let header = init_segment(width, height, fps)?;
        let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        if len < checkpoint.bytes || checkpoint.bytes < header.len() as u64 {
            return Err(invalid_input!(
                "{} is {len} bytes, which does not fit a checkpoint at {} bytes",
                path.display(),
                checkpoint.bytes
            ));
        }
        let mut existing = vec![0; header.len()];
        file.read_exact(&mut existing).map_err(io_error(path))?;
        if existing != header {
            return Err(invalid_input!(
                "{} was not written by this writer with {width}x{height} at {fps} fps",
                path.display()
            ));
        }
        check_prefix(&mut file, checkpoint.bytes, checkpoint.prefix_crc, path)?;
        file.set_len(checkpoint.bytes).and_then(|()| file.sync_all()).map_err(write_error(path))?;
        Ok(Self::new(file, path, width, height, fps, *checkpoint))
    }

    fn new(file: File, path: &Path, width: u32, height: u32, fps: f64, checkpoint: WriterCheckpoint) -> Self {
        let path = path.to_path_buf();
        Self { file, path, width, height, fps, encoder: None, pending: Vec::new(), checkpoint, aside: None }
    }
}

impl VideoWriter for Mp4Writer {
    fn append(&mut self, frames: &[RgbFrame]) -> Result<()> {
        check_frames(frames, self.width, self.height)?;
        for frame in frames {
            let encoder = match &mut self.encoder {
                Some(encoder) => encoder,
                empty => empty.insert(FragmentEncoder::new(self.fps)?),
            };
            self.pending.push(encoder.encode(frame)?);
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<WriterCheckpoint> {
        if self.pending.is_empty() {
            return Ok(self.checkpoint);
        }
        let sequence = self.checkpoint.fragments + 1;
        let start_time = self.checkpoint.frames * u64::from(SAMPLE_DURATION);
        let bytes = fragment(sequence, start_time, &self.pending)?;
        let path = &self.path;
        self.file.seek(SeekFrom::Start(self.checkpoint.bytes)).map_err(write_error(path))?;
        self.file.write_all(&bytes).and_then(|()| self.file.sync_all()).map_err(write_error(path))?;
        self.checkpoint.bytes += bytes.len() as u64;
        self.checkpoint.prefix_crc = continue_crc(self.checkpoint.prefix_crc, &bytes);
        self.checkpoint.frames += self.pending.len() as u64;
        self.checkpoint.fragments = sequence;
        self.pending.clear();
        self.encoder = None;
        Ok(self.checkpoint)
    }

    fn publish(&mut self) -> Result<()> {
        if self.checkpoint.frames > 0 {
            if let Some(mut aside) = self.aside.take() {
                aside.publish()?;
            }
        }
        Ok(())
    }

    fn frames_written(&self) -> u64 {
        self.checkpoint.frames + self.pending.len() as u64
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        // Fragmented MP4 needs no trailer: the last commit already left a complete file.
        self.commit()?;
        match self.aside.take() {
            Some(mut aside) => aside.publish(),
            None => Ok(()),
        }
    }
}

/// The `ftyp` + `moov` of a `width x height` H.264 track at `fps`.
fn init_segment(width: u32, height: u32, fps: f64) -> Result<Vec<u8>> {
    check_size(width, height)?;
    let avc = encoder_config_record(width, height, fps)?;
    let timescale = (fps * f64::from(SAMPLE_DURATION)).round() as u32;
    let mut out = Vec::new();
    mp4_box(&mut out, b"ftyp", |o| {
        o.extend_from_slice(b"isom");
        put_u32(o, 0x200);
        // iso6 announces movie fragments; avc1/mp41 keep older players happy.
        for brand in [b"isom", b"iso6", b"avc1", b"mp41"] {
            o.extend_from_slice(brand);
        }
    });
    mp4_box(&mut out, b"moov", |o| {
        mvhd(o, timescale);
        mp4_box(o, b"trak", |o| {
            tkhd(o, width, height);
            mp4_box(o, b"mdia", |o| {
                mdhd(o, timescale);
                full_box(o, b"hdlr", 0, 0, |o| {
                    put_u32(o, 0);
                    o.extend_from_slice(b"vide");
                    o.extend_from_slice(&[0; 12]);
                    o.extend_from_slice(b"VideoHandler\0");
                });
                minf(o, width, height, &avc);
            });
        });
        mp4_box(o, b"mvex", |o| {
            full_box(o, b"trex", 0, 0, |o| {
                for value in [TRACK_ID, 1, SAMPLE_DURATION, 0, 0] {
                    put_u32(o, value);
                }
            });
        });
    });
    Ok(out)
}

/// Refuses sizes H.264 4:2:0 or openh264 cannot encode.
fn check_size(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
        return Err(invalid_input!("H.264 video needs an even, non-zero width and height, got {width}x{height}"));
    }
    if width.max(height) > MAX_LONG_SIDE || width.min(height) > MAX_SHORT_SIDE {
        return Err(invalid_input!("H.264 video is limited to 3840x2160, got {width}x{height}"));
    }
    Ok(())
}

/// One `moof` + `mdat` holding `frames`, numbered `sequence`, starting at `start_time` ticks.
fn fragment(sequence: u32, start_time: u64, frames: &[EncodedFrame]) -> Result<Vec<u8>> {
    let payload: usize = frames.iter().map(|f| f.sample.len()).sum();
    let mdat_size = u32::try_from(payload + 8)
        .map_err(|_| invalid_input!("an MP4 fragment cannot exceed 4 GiB; commit more often"))?;
    let mut out = Vec::with_capacity(payload + 64 + 8 * frames.len());
    let mut data_offset_at = 0;
    mp4_box(&mut out, b"moof", |o| {
        full_box(o, b"mfhd", 0, 0, |o| put_u32(o, sequence));
        mp4_box(o, b"traf", |o| {
            // default-base-is-moof | default-sample-duration-present
            full_box(o, b"tfhd", 0, 0x02_0008, |o| {
                put_u32(o, TRACK_ID);
                put_u32(o, SAMPLE_DURATION);
            });
            full_box(o, b"tfdt", 1, 0, |o| o.extend_from_slice(&start_time.to_be_bytes()));
            // data-offset | sample-size | sample-flags
            full_box(o, b"trun", 0, 0x00_0601, |o| {
                put_u32(o, frames.len() as u32);
                data_offset_at = o.len();
                put_u32(o, 0);
                for frame in frames {
                    put_u32(o, frame.sample.len() as u32);
                    put_u32(o, if frame.is_sync { SYNC_FLAGS } else { NON_SYNC_FLAGS });
                }
            });
        });
    });
    // The sample data starts right after the mdat header, which follows the moof.
    let data_offset = (out.len() + 8) as u32;
    out[data_offset_at..data_offset_at + 4].copy_from_slice(&data_offset.to_be_bytes());
    put_u32(&mut out, mdat_size);
    out.extend_from_slice(b"mdat");
    for frame in frames {
        out.extend_from_slice(&frame.sample);
    }
    Ok(out)
}

fn mvhd(o: &mut Vec<u8>, timescale: u32) {
    full_box(o, b"mvhd", 0, 0, |o| {
        // Creation/modification times stay 0 so identical input gives identical files.
        for value in [0, 0, timescale, 0, 0x0001_0000] {
            put_u32(o, value);
        }
        o.extend_from_slice(&[0x01, 0x00]); // volume 1.0
        o.extend_from_slice(&[0; 10]);
        put_matrix(o);
        o.extend_from_slice(&[0; 24]);
        put_u32(o, TRACK_ID + 1);
    });
}

fn tkhd(o: &mut Vec<u8>, width: u32, height: u32) {
    // Flags: track enabled | in movie.
    full_box(o, b"tkhd", 0, 3, |o| {
        for value in [0, 0, TRACK_ID, 0, 0] {
            put_u32(o, value);
        }
        o.extend_from_slice(&[0; 16]); // reserved, layer, alternate group, volume, reserved
        put_matrix(o);
        put_u32(o, width << 16);
        put_u32(o, height << 16);
    });
}

fn mdhd(o: &mut Vec<u8>, timescale: u32) {
    full_box(o, b"mdhd", 0, 0, |o| {
        for value in [0, 0, timescale, 0] {
            put_u32(o, value);
        }
        o.extend_from_slice(&[0x55, 0xc4, 0, 0]); // language "und"
    });
}

fn minf(o: &mut Vec<u8>, width: u32, height: u32, avc: &AvcConfig) {
    mp4_box(o, b"minf", |o| {
        full_box(o, b"vmhd", 0, 1, |o| o.extend_from_slice(&[0; 8]));
        mp4_box(o, b"dinf", |o| {
            full_box(o, b"dref", 0, 0, |o| {
                put_u32(o, 1);
                // Flag 1: the media data is in this same file.
                full_box(o, b"url ", 0, 1, |_| {});
            });
        });
        mp4_box(o, b"stbl", |o| {
            full_box(o, b"stsd", 0, 0, |o| {
                put_u32(o, 1);
                avc1(o, width, height, avc);
            });
            // All samples live in the fragments, so the classic tables are empty.
            full_box(o, b"stts", 0, 0, |o| put_u32(o, 0));
            full_box(o, b"stsc", 0, 0, |o| put_u32(o, 0));
            full_box(o, b"stsz", 0, 0, |o| o.extend_from_slice(&[0; 8]));
            full_box(o, b"stco", 0, 0, |o| put_u32(o, 0));
        });
    });
}

fn avc1(o: &mut Vec<u8>, width: u32, height: u32, avc: &AvcConfig) {
    mp4_box(o, b"avc1", |o| {
        o.extend_from_slice(&[0; 6]);
        o.extend_from_slice(&1u16.to_be_bytes()); // data reference index
        o.extend_from_slice(&[0; 16]);
        o.extend_from_slice(&(width as u16).to_be_bytes());
        o.extend_from_slice(&(height as u16).to_be_bytes());
        put_u32(o, 0x0048_0000); // 72 dpi
        put_u32(o, 0x0048_0000);
        put_u32(o, 0);
        o.extend_from_slice(&1u16.to_be_bytes()); // frames per sample
        o.extend_from_slice(&[0; 32]); // compressor name
        o.extend_from_slice(&[0x00, 0x18, 0xff, 0xff]); // depth 24, pre-defined -1
        mp4_box(o, b"avcC", |o| o.extend_from_slice(&avc.to_bytes()));
    });
}

/// The identity transformation matrix of `mvhd`/`tkhd`.
fn put_matrix(o: &mut Vec<u8>) {
    for value in [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        put_u32(o, value);
    }
}

/// Appends a box: size, type, then whatever `body` writes.
fn mp4_box(out: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(kind);
    body(out);
    let size = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

/// Appends a full box: like [`mp4_box`] with a version byte and 24 bits of flags first.
fn full_box(out: &mut Vec<u8>, kind: &[u8; 4], version: u8, flags: u32, body: impl FnOnce(&mut Vec<u8>)) {
    mp4_box(out, kind, |o| {
        put_u32(o, (u32::from(version) << 24) | flags);
        body(o);
    });
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}
