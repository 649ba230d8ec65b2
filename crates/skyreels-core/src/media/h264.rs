//! H.264 through the bundled openh264: per-fragment encoding and per-sample decoding.
//!
//! Samples are kept in the MP4 ("AVCC") form throughout: NAL units each prefixed by a
//! big-endian length, with the SPS/PPS carried in an `avcC` record.

use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, QpRange, RateControlMode,
    VuiConfig,
};
use openh264::formats::{YUVBuffer, YUVSource};
use openh264::{OpenH264API, Timestamp};

use super::frame::RgbFrame;
use super::yuv::rgb_to_i420;
use crate::error::{invalid_input, Result};

/// Quantiser of every frame: visually near-lossless for generated video at a moderate size.
const QP: u8 = 20;
/// Bit rate announced to openh264 (it only picks the level from it; see `FragmentEncoder::new`).
const NOMINAL_BITRATE: u32 = 5_000_000;
/// A keyframe at least this often (in seconds) so players can seek inside long fragments.
const KEYFRAME_SECONDS: f64 = 2.0;
/// Bytes of the NAL length prefix in the samples we write.
const LENGTH_SIZE: usize = 4;
/// NAL unit types of the parameter sets.
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;

/// One encoded frame as an MP4 sample.
pub(crate) struct EncodedFrame {
    /// Length-prefixed NAL units.
    pub(crate) sample: Vec<u8>,
    /// Whether the frame is an IDR, i.e. decodable on its own.
    pub(crate) is_sync: bool,
}

/// Encodes the frames of one fragment; a fresh one per fragment makes the output depend
/// only on that fragment's frames, which is what lets a resumed file come out bit-identical.
pub(crate) struct FragmentEncoder {
    encoder: Encoder,
    fps: f64,
    frames: u64,
}

impl FragmentEncoder {
    /// A new encoder whose first frame will be an IDR.
    pub(crate) fn new(fps: f64) -> Result<Self> {
        let keyframe_interval = (fps * KEYFRAME_SECONDS).round().max(1.0) as u32;
        let config = EncoderConfig::new()
            // Buffer-based control clamped to QP = QP_MIN = QP_MAX is a constant quantiser; with
            // scene-change detection off nothing nudges it, and no frame is ever skipped.
            .rate_control_mode(RateControlMode::Bufferbased)
            .qp(QpRange::new(QP, QP))
            .scene_change_detect(false)
            .skip_frames(false)
            // Unused by a constant quantiser, but openh264 derives the stream's level from it.
            .bitrate(BitRate::from_bps(NOMINAL_BITRATE))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .complexity(Complexity::High)
            .intra_frame_period(IntraFramePeriod::from_num_frames(keyframe_interval))
            // One thread: slice layout and output bytes then never depend on the machine.
            .num_threads(1)
            // Says BT.601 limited range, the matrix `rgb_to_i420` uses, so players show true colours.
            .vui(VuiConfig::bt601());
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| invalid_input!("cannot start the H.264 encoder: {e}"))?;
        Ok(Self { encoder, fps, frames: 0 })
    }

    /// Encodes one even-sized frame into one sample.
    pub(crate) fn encode(&mut self, frame: &RgbFrame) -> Result<EncodedFrame> {
        let yuv = YUVBuffer::from_vec(rgb_to_i420(frame), frame.width as usize, frame.height as usize);
        // Timestamps restart with every fragment, again so a fragment depends only on itself.
        let millis = (self.frames as f64 * 1000.0 / self.fps).round() as u64;
        self.frames += 1;
        let stream = self
            .encoder
            .encode_at(&yuv, Timestamp::from_millis(millis))
            .map_err(|e| invalid_input!("H.264 encoding failed: {e}"))?;
        let is_sync = match stream.frame_type() {
            FrameType::IDR => true,
            FrameType::I | FrameType::P => false,
            other => return Err(invalid_input!("the H.264 encoder produced no picture ({other:?})")),
        };
        let mut sample = Vec::new();
        for layer in (0..stream.num_layers()).filter_map(|i| stream.layer(i)) {
            for nal in (0..layer.nal_count()).filter_map(|i| layer.nal_unit(i)) {
                push_nal(&mut sample, strip_start_code(nal));
            }
        }
        Ok(EncodedFrame { sample, is_sync })
    }
}

/// The `avcC` record of the stream our encoder produces at `width x height`.
///
/// Parameter sets depend only on the settings, not the pixels, so one grey frame reveals them.
pub(crate) fn encoder_config_record(width: u32, height: u32, fps: f64) -> Result<AvcConfig> {
    let grey = RgbFrame::new(width, height, vec![128; width as usize * height as usize * 3])?;
    let encoded = FragmentEncoder::new(fps)?.encode(&grey)?;
    let nals = split_sample(&encoded.sample, LENGTH_SIZE).map_err(|e| invalid_input!("{e}"))?;
    let pick = |kind: u8| nals.iter().filter(|n| nal_type(n) == kind).map(|n| n.to_vec()).collect::<Vec<_>>();
    let config = AvcConfig { length_size: LENGTH_SIZE, sps: pick(NAL_SPS), pps: pick(NAL_PPS) };
    if config.sps.is_empty() || config.pps.is_empty() {
        return Err(invalid_input!("the H.264 encoder emitted no SPS/PPS"));
    }
    Ok(config)
}

/// The decoder configuration of an H.264 track (the body of an `avcC` box).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AvcConfig {
    /// Bytes of each NAL length prefix in the samples (1, 2 or 4).
    pub(crate) length_size: usize,
    /// Sequence parameter sets, without start codes.
    pub(crate) sps: Vec<Vec<u8>>,
    /// Picture parameter sets, without start codes.
    pub(crate) pps: Vec<Vec<u8>>,
}

impl AvcConfig {
    /// Parses an `avcC` box body.
    pub(crate) fn parse(body: &[u8]) -> std::result::Result<Self, String> {
        let bad = || "truncated avcC record".to_string();
        let header = body.get(..6).ok_or_else(bad)?;
        if header[0] != 1 {
            return Err(format!("unknown avcC version {}", header[0]));
        }
        let length_size = usize::from(header[4] & 3) + 1;
        if length_size == 3 {
            return Err("invalid NAL length size 3 in avcC".into());
        }
        let mut rest = &body[5..];
        // Either list may be empty: `avc3` streams carry their parameter sets in-band.
        let sps = read_parameter_sets(&mut rest, 0x1f).ok_or_else(bad)?;
        let pps = read_parameter_sets(&mut rest, 0xff).ok_or_else(bad)?;
        Ok(Self { length_size, sps, pps })
    }

    /// Serialises the record as an `avcC` box body.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Profile, compatibility flags and level are copied from the first SPS, as the spec asks.
        let profile = self.sps.first().and_then(|sps| sps.get(1..4)).unwrap_or(&[0; 3]);
        let mut out = vec![1, profile[0], profile[1], profile[2], 0xfc | (self.length_size as u8 - 1)];
        out.push(0xe0 | self.sps.len() as u8);
        for set in &self.sps {
            out.extend_from_slice(&(set.len() as u16).to_be_bytes());
            out.extend_from_slice(set);
        }
        out.push(self.pps.len() as u8);
        for set in &self.pps {
            out.extend_from_slice(&(set.len() as u16).to_be_bytes());
            out.extend_from_slice(set);
        }
        out
    }

    /// The parameter sets in Annex B form, to prime a decoder.
    fn annex_b_headers(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for set in self.sps.iter().chain(&self.pps) {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(set);
        }
        out
    }
}

/// Reads a count byte (masked) followed by that many 16-bit-length-prefixed parameter sets.
fn read_parameter_sets(rest: &mut &[u8], count_mask: u8) -> Option<Vec<Vec<u8>>> {
    let (&count, tail) = rest.split_first()?;
    *rest = tail;
    let mut sets = Vec::new();
    for _ in 0..(count & count_mask) {
        let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        let set = rest.get(2..2 + len).filter(|set| !set.is_empty())?;
        sets.push(set.to_vec());
        *rest = &rest[2 + len..];
    }
    Some(sets)
}

/// Decodes the samples of one H.264 track to RGB frames.
pub(crate) struct SampleDecoder {
    decoder: Decoder,
    length_size: usize,
    annex_b: Vec<u8>,
}

impl SampleDecoder {
    /// A decoder primed with the track's SPS/PPS.
    pub(crate) fn new(config: &AvcConfig) -> std::result::Result<Self, String> {
        let decoder = Decoder::with_api_config(
            OpenH264API::from_source(),
            DecoderConfig::new().flush_after_decode(Flush::NoFlush),
        )
        .map_err(|e| format!("cannot start the H.264 decoder: {e}"))?;
        let mut this = Self { decoder, length_size: config.length_size, annex_b: Vec::new() };
        let headers = config.annex_b_headers();
        if !headers.is_empty() {
            this.decoder.decode(&headers).map_err(|e| format!("bad SPS/PPS: {e}"))?;
        }
        Ok(this)
    }

    /// Decodes one sample; `None` while the decoder still holds the picture back.
    pub(crate) fn decode(&mut self, sample: &[u8]) -> std::result::Result<Option<RgbFrame>, String> {
        self.annex_b.clear();
        for nal in split_sample(sample, self.length_size)? {
            self.annex_b.extend_from_slice(&[0, 0, 0, 1]);
            self.annex_b.extend_from_slice(nal);
        }
        match self.decoder.decode(&self.annex_b) {
            Ok(Some(yuv)) => to_rgb(&yuv).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("corrupt H.264 data: {e}")),
        }
    }

    /// Returns the pictures still held back at the end of the stream.
    pub(crate) fn flush(&mut self) -> std::result::Result<Vec<RgbFrame>, String> {
        let pictures = self.decoder.flush_remaining().map_err(|e| format!("corrupt H.264 data: {e}"))?;
        pictures.iter().map(to_rgb).collect()
    }
}

/// Converts a decoded picture to RGB with openh264's BT.601 limited-range converter.
fn to_rgb(yuv: &DecodedYUV<'_>) -> std::result::Result<RgbFrame, String> {
    let (w, h) = yuv.dimensions();
    let mut data = vec![0; w * h * 3];
    yuv.write_rgb8(&mut data);
    RgbFrame::new(w as u32, h as u32, data).map_err(|e| e.to_string())
}

/// Splits a length-prefixed sample into its NAL units.
pub(crate) fn split_sample(mut sample: &[u8], length_size: usize) -> std::result::Result<Vec<&[u8]>, String> {
    let mut nals = Vec::new();
    while !sample.is_empty() {
        let prefix = sample.get(..length_size).ok_or("truncated NAL length")?;
        let len = prefix.iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let nal = sample.get(length_size..length_size + len).ok_or("NAL unit overruns its sample")?;
        nals.push(nal);
        sample = &sample[length_size + len..];
    }
    Ok(nals)
}

/// Appends `nal` with a 4-byte length prefix.
fn push_nal(sample: &mut Vec<u8>, nal: &[u8]) {
    sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
    sample.extend_from_slice(nal);
}

/// Removes the Annex B start code openh264 puts before each NAL unit.
fn strip_start_code(nal: &[u8]) -> &[u8] {
    nal.strip_prefix(&[0, 0, 0, 1]).or_else(|| nal.strip_prefix(&[0, 0, 1])).unwrap_or(nal)
}

/// The `nal_unit_type` of a NAL unit.
fn nal_type(nal: &[u8]) -> u8 {
    nal.first().map_or(0, |b| b & 0x1f)
}
