//! A streaming MP4 reader for the first H.264 video track.
//!
//! Understands both layouts: classic sample tables in `moov` (what ffmpeg and cameras write)
//! and movie fragments (`moof`, what our writer produces). Opening the file walks the box
//! headers once and keeps only a sample index (offset, size, duration); pixel data is read
//! and decoded one sample at a time. A box or sample that runs past the end of the file, which is
//! what a crash in the middle of a write leaves, ends the video there instead of failing it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::h264::{AvcConfig, SampleDecoder};
use super::{io_error, RgbFrame, VideoReader};
use crate::error::{invalid_input, Error, Result};

/// Parse errors before the path is attached.
type Parse<T> = std::result::Result<T, String>;

/// Largest `moov`/`moof` read into memory; real ones are far smaller, so more means corruption.
const MAX_METADATA_BOX: u64 = 256 << 20;

/// Whether `kind` is a box type that can start an MP4 file.
pub(crate) fn is_top_level_box(kind: &[u8]) -> bool {
    matches!(kind, b"ftyp" | b"styp" | b"moov" | b"mdat" | b"free" | b"skip" | b"wide")
}

/// Where one sample's bytes are, and how long it shows (in track ticks).
#[derive(Clone, Copy, Debug)]
struct SampleRef {
    offset: u64,
    size: u32,
    duration: u32,
}

/// What the `moov` says about the video track.
struct Track {
    id: u32,
    width: u32,
    height: u32,
    timescale: u32,
    avc: AvcConfig,
    /// Samples of the classic tables (empty for a fragmented file).
    samples: Vec<SampleRef>,
    /// Defaults from `trex` for fragments: (duration, size).
    fragment_defaults: (u32, u32),
}

/// Streams RGB frames out of an MP4 file.
pub(crate) struct Mp4Reader {
    path: PathBuf,
    file: File,
    width: u32,
    height: u32,
    fps: Option<f64>,
    samples: Vec<SampleRef>,
    next_sample: usize,
    decoder: SampleDecoder,
    ready: VecDeque<RgbFrame>,
    buffer: Vec<u8>,
    finished: bool,
}

impl Mp4Reader {
    /// Indexes the samples of the first H.264 track of `path`.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(io_error(path))?;
        let len = file.metadata().map_err(io_error(path))?.len();
        let (track, samples) = index_file(&mut file, len, path)?;
        let duration: u64 = samples.iter().map(|s| u64::from(s.duration)).sum();
        let fps = (duration > 0 && !samples.is_empty())
            .then(|| samples.len() as f64 * f64::from(track.timescale) / duration as f64);
        let decoder = SampleDecoder::new(&track.avc).map_err(|e| corrupt(path, e))?;
        let mut reader = Self {
            path: path.to_path_buf(),
            file,
            width: track.width,
            height: track.height,
            fps,
            samples,
            next_sample: 0,
            decoder,
            ready: VecDeque::new(),
            buffer: Vec::new(),
            finished: false,
        };
        // Decode up to the first picture: its size, after the SPS cropping, is the true frame
        // size (the sample entry's may be the coded size), and a broken stream fails right here.
        while reader.ready.is_empty() && !reader.finished {
            reader.step()?;
        }
        if let Some(first) = reader.ready.front() {
            (reader.width, reader.height) = (first.width, first.height);
        }
        Ok(reader)
    }

    /// Decodes the next sample, or flushes the decoder after the last one.
    fn step(&mut self) -> Result<()> {
        let Some(sample) = self.samples.get(self.next_sample).copied() else {
            self.finished = true;
            let rest = self.decoder.flush().map_err(|e| corrupt(&self.path, e))?;
            self.ready.extend(rest);
            return Ok(());
        };
        self.next_sample += 1;
        self.buffer.resize(sample.size as usize, 0);
        self.file
            .seek(SeekFrom::Start(sample.offset))
            .and_then(|_| self.file.read_exact(&mut self.buffer))
            .map_err(io_error(&self.path))?;
        let frame = self.decoder.decode(&self.buffer).map_err(|e| corrupt(&self.path, e))?;
        self.ready.extend(frame);
        Ok(())
    }

    /// Hands out a decoded frame, refusing streams whose picture size changes midway.
    fn take_ready(&mut self) -> Option<Result<RgbFrame>> {
        let frame = self.ready.pop_front()?;
        if (frame.width, frame.height) == (self.width, self.height) {
            return Some(Ok(frame));
        }
        self.finished = true;
        self.ready.clear();
        let change =
            format!("the frame size changes from {}x{} to {}x{}", self.width, self.height, frame.width, frame.height);
        Some(Err(corrupt(&self.path, change)))
    }
}

impl Iterator for Mp4Reader {
    type Item = Result<RgbFrame>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(frame) = self.take_ready() {
                return Some(frame);
            }
            if self.finished {
                return None;
            }
            if let Err(e) = self.step() {
                // One error ends the stream; retrying a broken decoder would only repeat it.
                self.finished = true;
                return Some(Err(e));
            }
        }
    }
}

impl VideoReader for Mp4Reader {
    fn width(&self) -> u32 {
        self.width
    }
    fn height(&self) -> u32 {
        self.height
    }
    fn fps(&self) -> Option<f64> {
        self.fps
    }
    fn frame_count(&self) -> Option<u64> {
        Some(self.samples.len() as u64)
    }
}

fn corrupt(path: &Path, reason: String) -> Error {
    invalid_input!("{} is not a readable MP4 video: {reason}", path.display())
}

/// Walks the top-level boxes: returns the video track and its completely written samples.
fn index_file(file: &mut File, len: u64, path: &Path) -> Result<(Track, Vec<SampleRef>)> {
    let mut track: Option<Track> = None;
    let mut samples = Vec::new();
    let mut pos = 0u64;
    while let Some((kind, body_start, end)) = read_box_header(file, pos, len).map_err(io_error(path))? {
        match &kind {
            b"moov" => {
                let body = read_body(file, body_start, end, path)?;
                let mut parsed = parse_moov(&body).map_err(|e| corrupt(path, e))?;
                samples = std::mem::take(&mut parsed.samples);
                track = Some(parsed);
            }
            b"moof" => {
                let Some(track) = &track else { break };
                let body = read_body(file, body_start, end, path)?;
                // A damaged fragment ends the video, like a truncated one.
                match parse_moof(&body, pos, track) {
                    Ok(fragment) => samples.extend(fragment),
                    Err(_) => break,
                }
            }
            _ => {}
        }
        pos = end;
    }
    let track = track.ok_or_else(|| corrupt(path, "no moov box (the file is incomplete or not an MP4)".into()))?;
    // Samples whose bytes were never (fully) written are dropped, with all that follow them.
    if let Some(cut) = samples.iter().position(|s| s.offset.saturating_add(u64::from(s.size)) > len) {
        samples.truncate(cut);
    }
    Ok((track, samples))
}

/// Reads the box header at `pos`: `(type, body start, end)`, or `None` at the end of the
/// file or when the box does not fit in it (a truncated final box).
fn read_box_header(file: &mut File, pos: u64, len: u64) -> std::io::Result<Option<([u8; 4], u64, u64)>> {
    if len.saturating_sub(pos) < 8 {
        return Ok(None);
    }
    let mut header = [0u8; 16];
    let header_len = (len - pos).min(16) as usize;
    file.seek(SeekFrom::Start(pos))?;
    file.read_exact(&mut header[..header_len])?;
    let word = |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let kind = [header[4], header[5], header[6], header[7]];
    let (size, body_offset) = match word(0) {
        0 => (len - pos, 8),
        // A 64-bit size; if the file ends inside it the box is truncated anyway.
        1 if header_len == 16 => ((u64::from(word(8)) << 32) | u64::from(word(12)), 16),
        1 => return Ok(None),
        size => (u64::from(size), 8),
    };
    if size < body_offset || size > len - pos {
        return Ok(None);
    }
    Ok(Some((kind, pos + body_offset, pos + size)))
}

fn read_body(file: &mut File, start: u64, end: u64, path: &Path) -> Result<Vec<u8>> {
    if end - start > MAX_METADATA_BOX {
        return Err(corrupt(path, format!("a metadata box of {} bytes", end - start)));
    }
    let mut body = vec![0; (end - start) as usize];
    file.seek(SeekFrom::Start(start)).and_then(|_| file.read_exact(&mut body)).map_err(io_error(path))?;
    Ok(body)
}

/// Finds the first H.264 video track in a `moov` body.
fn parse_moov(moov: &[u8]) -> Parse<Track> {
    let mut trex = Vec::new();
    if let Some(mvex) = find(moov, b"mvex")? {
        for body in children(mvex, b"trex") {
            let mut c = FullBox::new(body?)?.cursor;
            let id = c.u32()?;
            let (_, duration, size) = (c.u32()?, c.u32()?, c.u32()?);
            trex.push((id, (duration, size)));
        }
    }
    for trak in children(moov, b"trak") {
        if let Some(mut track) = parse_trak(trak?)? {
            track.fragment_defaults = trex.iter().find(|(id, _)| *id == track.id).map_or((0, 0), |(_, d)| *d);
            return Ok(track);
        }
    }
    Err("no video track".into())
}

/// Parses a `trak`; `None` when it is not a video track.
fn parse_trak(trak: &[u8]) -> Parse<Option<Track>> {
    let mdia = need(trak, b"mdia")?;
    let mut hdlr = FullBox::new(need(mdia, b"hdlr")?)?.cursor;
    hdlr.skip(4)?;
    if hdlr.bytes(4)? != b"vide" {
        return Ok(None);
    }
    let tkhd = FullBox::new(need(trak, b"tkhd")?)?;
    let mut c = tkhd.cursor;
    c.skip(if tkhd.version == 1 { 16 } else { 8 })?;
    let id = c.u32()?;
    let mdhd = FullBox::new(need(mdia, b"mdhd")?)?;
    let mut c = mdhd.cursor;
    c.skip(if mdhd.version == 1 { 16 } else { 8 })?;
    let timescale = c.u32()?;
    if timescale == 0 {
        return Err("video track has timescale 0".into());
    }
    let stbl = need(need(mdia, b"minf")?, b"stbl")?;
    let (width, height, avc) = parse_stsd(need(stbl, b"stsd")?)?;
    let samples = parse_sample_tables(stbl)?;
    Ok(Some(Track { id, width, height, timescale, avc, samples, fragment_defaults: (0, 0) }))
}

/// Reads the first sample entry; only H.264 (`avc1`/`avc3`) is accepted.
fn parse_stsd(stsd: &[u8]) -> Parse<(u32, u32, AvcConfig)> {
    let mut c = FullBox::new(stsd)?.cursor;
    c.skip(4)?;
    let (kind, entry) = BoxIter::new(c.rest()).next().ok_or("empty sample description")??;
    if &kind != b"avc1" && &kind != b"avc3" {
        return Err(format!(
            "the video codec is '{}', but only H.264 (avc1) is supported",
            String::from_utf8_lossy(&kind)
        ));
    }
    // VisualSampleEntry: 24 bytes before width/height, 78 bytes before its child boxes.
    let mut c = Cursor::new(entry);
    c.skip(24)?;
    let (width, height) = (u32::from(c.u16()?), u32::from(c.u16()?));
    let children = entry.get(78..).ok_or("truncated avc1 entry")?;
    let avc = AvcConfig::parse(need(children, b"avcC")?)?;
    Ok((width, height, avc))
}

/// Expands `stts`/`stsz`/`stsc`/`stco` into per-sample locations and durations.
fn parse_sample_tables(stbl: &[u8]) -> Parse<Vec<SampleRef>> {
    let sizes = parse_stsz(need(stbl, b"stsz")?)?;
    let chunk_offsets = match find(stbl, b"stco")? {
        Some(stco) => read_table(stco, 4, |c| c.u32().map(u64::from))?,
        None => read_table(need(stbl, b"co64")?, 8, |c| c.u64())?,
    };
    let stsc = read_table(need(stbl, b"stsc")?, 12, |c| Ok((c.u32()?, c.u32()?, c.u32()?)))?;
    let stts = read_table(need(stbl, b"stts")?, 8, |c| Ok((c.u32()?, c.u32()?)))?;
    let mut durations = stts.iter().flat_map(|&(count, delta)| std::iter::repeat_n(delta, count as usize));

    let mut samples = Vec::with_capacity(sizes.len());
    let mut sizes_left = sizes.iter();
    for (i, &(first_chunk, per_chunk, _)) in stsc.iter().enumerate() {
        // A run of chunks lasts until the next entry's first chunk (or the last chunk).
        let next_first = stsc.get(i + 1).map_or(chunk_offsets.len() as u64 + 1, |e| u64::from(e.0));
        for chunk in u64::from(first_chunk)..next_first {
            let mut offset =
                *chunk_offsets.get((chunk as usize).wrapping_sub(1)).ok_or("stsc names a missing chunk")?;
            for _ in 0..per_chunk {
                let Some(&size) = sizes_left.next() else { return Ok(samples) };
                let duration = durations.next().unwrap_or(0);
                samples.push(SampleRef { offset, size, duration });
                // Offsets come from the file; saturating keeps a bogus one past EOF, where it is cut.
                offset = offset.saturating_add(u64::from(size));
            }
        }
    }
    Ok(samples)
}

/// Per-sample sizes from `stsz` (a constant size is expanded).
fn parse_stsz(stsz: &[u8]) -> Parse<Vec<u32>> {
    let mut c = FullBox::new(stsz)?.cursor;
    let (constant, count) = (c.u32()?, c.u32()?);
    if constant != 0 {
        // No per-sample table to bound the count by, so bound it by something sane.
        if count > 100_000_000 {
            return Err("implausible sample count".into());
        }
        return Ok(vec![constant; count as usize]);
    }
    if u64::from(count) * 4 > c.rest().len() as u64 {
        return Err("truncated stsz".into());
    }
    (0..count).map(|_| c.u32()).collect()
}

/// Reads a full box holding a 32-bit entry count and fixed-size entries.
fn read_table<T>(body: &[u8], entry_size: u64, read: impl Fn(&mut Cursor<'_>) -> Parse<T>) -> Parse<Vec<T>> {
    let mut c = FullBox::new(body)?.cursor;
    let count = c.u32()?;
    // The count comes from the file: check it against the bytes present before allocating.
    if u64::from(count) * entry_size > c.rest().len() as u64 {
        return Err("truncated sample table".into());
    }
    (0..count).map(|_| read(&mut c)).collect()
}

/// Samples of one `moof` starting at file offset `moof_pos`.
fn parse_moof(moof: &[u8], moof_pos: u64, track: &Track) -> Parse<Vec<SampleRef>> {
    let mut samples = Vec::new();
    for traf in children(moof, b"traf") {
        let traf = traf?;
        let tfhd = FullBox::new(need(traf, b"tfhd")?)?;
        let mut c = tfhd.cursor;
        if c.u32()? != track.id {
            continue;
        }
        let flags = tfhd.flags;
        let base = if flags & 0x1 != 0 { c.u64()? } else { moof_pos };
        if flags & 0x2 != 0 {
            c.skip(4)?; // sample description index
        }
        let default_duration = if flags & 0x8 != 0 { c.u32()? } else { track.fragment_defaults.0 };
        let default_size = if flags & 0x10 != 0 { c.u32()? } else { track.fragment_defaults.1 };
        let mut next_offset = base;
        for trun in children(traf, b"trun") {
            let trun = FullBox::new(trun?)?;
            next_offset = parse_trun(trun, base, next_offset, (default_duration, default_size), &mut samples)?;
        }
    }
    Ok(samples)
}

/// Appends one `trun`'s samples; returns the offset just past its data.
fn parse_trun(
    trun: FullBox<'_>,
    base: u64,
    mut offset: u64,
    (default_duration, default_size): (u32, u32),
    samples: &mut Vec<SampleRef>,
) -> Parse<u64> {
    let flags = trun.flags;
    let mut c = trun.cursor;
    let count = c.u32()?;
    if flags & 0x1 != 0 {
        let data_offset = c.u32()? as i32;
        offset = base.checked_add_signed(i64::from(data_offset)).ok_or("negative data offset")?;
    }
    if flags & 0x4 != 0 {
        c.skip(4)?; // first-sample flags
    }
    let fields = [0x100, 0x200, 0x400, 0x800].iter().filter(|&&f| flags & f != 0).count() as u64;
    if u64::from(count) * fields * 4 > c.rest().len() as u64 || (fields == 0 && count > 1_000_000) {
        return Err("truncated trun".into());
    }
    for _ in 0..count {
        let duration = if flags & 0x100 != 0 { c.u32()? } else { default_duration };
        let size = if flags & 0x200 != 0 { c.u32()? } else { default_size };
        c.skip(4 * usize::from(flags & 0x400 != 0) + 4 * usize::from(flags & 0x800 != 0))?;
        samples.push(SampleRef { offset, size, duration });
        offset = offset.saturating_add(u64::from(size));
    }
    Ok(offset)
}

/// The body of the first child box of type `kind`, if any.
fn find<'a>(data: &'a [u8], kind: &[u8; 4]) -> Parse<Option<&'a [u8]>> {
    for item in BoxIter::new(data) {
        let (k, body) = item?;
        if &k == kind {
            return Ok(Some(body));
        }
    }
    Ok(None)
}

/// Like [`find`], but a missing box is an error.
fn need<'a>(data: &'a [u8], kind: &[u8; 4]) -> Parse<&'a [u8]> {
    find(data, kind)?.ok_or_else(|| format!("missing '{}' box", String::from_utf8_lossy(kind)))
}

/// Bodies of all child boxes of type `kind`.
fn children<'a>(data: &'a [u8], kind: &'a [u8; 4]) -> impl Iterator<Item = Parse<&'a [u8]>> + 'a {
    BoxIter::new(data).filter_map(move |item| match item {
        Ok((k, body)) => (&k == kind).then_some(Ok(body)),
        Err(e) => Some(Err(e)),
    })
}

/// Iterates the boxes packed in a byte slice; stops after the first malformed one.
struct BoxIter<'a> {
    rest: &'a [u8],
}

impl<'a> BoxIter<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }
}

impl<'a> Iterator for BoxIter<'a> {
    type Item = Parse<([u8; 4], &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let result = split_box(self.rest);
        self.rest = match &result {
            Ok((_, _, rest)) => rest,
            Err(_) => &[],
        };
        Some(result.map(|(kind, body, _)| (kind, body)))
    }
}

/// Splits the first box off `data`: `(type, body, rest)`.
fn split_box(data: &[u8]) -> Parse<([u8; 4], &[u8], &[u8])> {
    let mut c = Cursor::new(data);
    let size = c.u32()?;
    let kind: [u8; 4] = c.bytes(4)?.try_into().map_err(|_| "bad box header")?;
    let (size, header) = match size {
        0 => (data.len() as u64, 8),
        1 => (c.u64()?, 16),
        n => (u64::from(n), 8),
    };
    if size < header || size > data.len() as u64 {
        return Err(format!("box '{}' overruns its parent", String::from_utf8_lossy(&kind)));
    }
    let (this, rest) = data.split_at(size as usize);
    Ok((kind, &this[header as usize..], rest))
}

/// A full box: version, flags, and a cursor over the rest.
struct FullBox<'a> {
    version: u8,
    flags: u32,
    cursor: Cursor<'a>,
}

impl<'a> FullBox<'a> {
    fn new(body: &'a [u8]) -> Parse<Self> {
        let mut cursor = Cursor::new(body);
        let word = cursor.u32()?;
        Ok(Self { version: (word >> 24) as u8, flags: word & 0x00ff_ffff, cursor })
    }
}

/// Bounds-checked big-endian reads.
#[derive(Clone, Copy)]
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn bytes(&mut self, n: usize) -> Parse<&'a [u8]> {
        if n > self.data.len() {
            return Err("truncated box".into());
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn skip(&mut self, n: usize) -> Parse<()> {
        self.bytes(n).map(|_| ())
    }

    fn rest(&self) -> &'a [u8] {
        self.data
    }

    fn u16(&mut self) -> Parse<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Parse<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Parse<u64> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }
}
