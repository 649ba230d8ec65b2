//! GGUF files (llama.cpp's container) holding quantised Wan/SkyReels transformers, in city96's
//! layout: the original Wan tensor names and the 5-D patch embedding as a 5-D F32 tensor.
//!
//! The header is parsed here because candle's GGUF reader stops at four dimensions; the
//! quantised blocks (Q8_0, Q4_K and the other ggml types) become candle `QTensor`s, which
//! dequantise on the CPU and on CUDA. Tensors are read on demand with positioned reads, so
//! opening a 15 GB file costs only its header.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::{TensorShapes, Weights};
use crate::error::{Error, Result};

/// "GGUF" read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Tensor data is aligned to this unless the file says otherwise (`general.alignment`).
const DEFAULT_ALIGNMENT: u64 = 32;
/// Prefixes some converters leave on Wan tensor names.
const NAME_PREFIXES: [&str; 2] = ["model.diffusion_model.", "diffusion_model."];

/// One tensor's place in the file.
#[derive(Debug, Clone)]
pub struct GgufTensor {
    /// Shape in PyTorch order (outermost first; GGUF stores it innermost first).
    pub shape: Vec<usize>,
    /// How the values are stored.
    pub ggml_type: GgmlDType,
    /// Byte offset from the start of the data section.
    offset: u64,
}

impl GgufTensor {
    /// Whether the values are block-quantised (not plain F32/F16/BF16).
    pub fn is_quantized(&self) -> bool {
        !matches!(self.ggml_type, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
    }

    fn byte_len(&self) -> Option<usize> {
        let elements: usize = self.shape.iter().product();
        let block = self.ggml_type.block_size();
        elements.is_multiple_of(block).then(|| elements / block * self.ggml_type.type_size())
    }
}

/// An opened GGUF file: its tensor table, read without loading any tensor.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    file: File,
    tensors: HashMap<String, GgufTensor>,
    data_start: u64,
}

impl GgufFile {
    /// Reads the header and tensor table, checking that every tensor lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadModelFile { path: path.to_path_buf(), reason };
        let file = File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let file_len = file.metadata().map_err(|source| Error::Io { path: path.to_path_buf(), source })?.len();
        let mut reader = Header { inner: BufReader::new(&file) };
        let (tensors, alignment) = reader.read_table().map_err(|e| bad(e.to_string()))?;
        let position = reader.inner.stream_position().map_err(|e| bad(e.to_string()))?;
        let data_start = position.div_ceil(alignment) * alignment;
        for (name, tensor) in &tensors {
            let len = tensor.byte_len().ok_or_else(|| {
                bad(format!(
                    "tensor `{name}` of shape {:?} does not fill whole {:?} blocks",
                    tensor.shape, tensor.ggml_type
                ))
            })?;
            if data_start + tensor.offset + len as u64 > file_len {
                return Err(bad(format!("tensor `{name}` runs past the end of the file (truncated?)")));
            }
        }
        Ok(Self { path: path.to_path_buf(), file, tensors, data_start })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor, by its name without converter prefixes.
    pub fn tensors(&self) -> &HashMap<String, GgufTensor> {
        &self.tensors
    }

    /// Scalar parameters over all tensors.
    pub fn parameter_count(&self) -> usize {
        self.tensors.values().map(|t| t.shape.iter().product::<usize>()).sum()
    }

    fn entry(&self, name: &str, expected: &[usize]) -> Result<&GgufTensor> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), dir: self.path.clone() })?;
        if tensor.shape != expected {
            return Err(Error::ShapeMismatch {
                name: name.to_string(),
                file: self.path.clone(),
                expected: expected.to_vec(),
                found: tensor.shape.clone(),
            });
        }
        Ok(tensor)
    }

    fn read_bytes(&self, tensor: &GgufTensor) -> Result<Vec<u8>> {
        let len = tensor.byte_len().unwrap_or(0);
        let mut bytes = vec![0u8; len];
        self.file
            .read_exact_at(&mut bytes, self.data_start + tensor.offset)
            .map_err(|source| Error::Io { path: self.path.clone(), source })?;
        Ok(bytes)
    }

    /// The tensor `name` as a candle `QTensor` on `device` (any storage type), shape-checked.
    pub fn qtensor(&self, name: &str, expected: &[usize], device: &Device) -> Result<QTensor> {
        let tensor = self.entry(name, expected)?;
        let bytes = self.read_bytes(tensor)?;
        Ok(qtensor_from_ggml(tensor.ggml_type, &bytes, tensor.shape.clone(), device)?)
    }
}

impl Weights for GgufFile {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let tensor = self.entry(name, shape)?;
        let plain = match tensor.ggml_type {
            GgmlDType::F32 => Some(DType::F32),
            GgmlDType::F16 => Some(DType::F16),
            GgmlDType::BF16 => Some(DType::BF16),
            _ => None,
        };
        let values = match plain {
            Some(stored) => Tensor::from_raw_buffer(&self.read_bytes(tensor)?, stored, shape, &Device::Cpu)?,
            None => self.qtensor(name, shape, &Device::Cpu)?.dequantize(&Device::Cpu)?,
        };
        Ok(values.to_dtype(dtype)?.to_device(device)?)
    }

    fn quantized(&self, name: &str, shape: &[usize], device: &Device) -> Option<Result<QTensor>> {
        match self.tensors.get(name) {
            Some(t) if t.is_quantized() => Some(self.qtensor(name, shape, device)),
            _ => None,
        }
    }
}

impl TensorShapes for GgufFile {
    fn tensor_shape(&self, name: &str) -> Result<Vec<usize>> {
        self.tensors
            .get(name)
            .map(|t| t.shape.clone())
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), dir: self.path.clone() })
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// The ggml storage type with this GGUF id.
fn ggml_type(id: u32) -> std::io::Result<GgmlDType> {
    Ok(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        other => {
            return Err(invalid(format!(
                "tensor storage type {other} is not supported (use F32/F16/BF16, Q4_0…Q8_0 or a K-quant)"
            )))
        }
    })
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Little-endian readers over the header.
struct Header<R> {
    inner: R,
}

impl<R: Read> Header<R> {
    fn bytes<const N: usize>(&mut self) -> std::io::Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf)?;
        Ok(buf)
    }

    fn u32(&mut self) -> std::io::Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> std::io::Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A count that must fit what a sane header holds (guards allocations on corrupt input).
    fn count(&mut self, what: &str, limit: u64) -> std::io::Result<usize> {
        let n = self.u64()?;
        if n > limit {
            return Err(invalid(format!("{what} count {n} is implausible (corrupt header?)")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> std::io::Result<String> {
        let len = self.count("string length", 1 << 24)?;
        let mut buf = vec![0u8; len];
        self.inner.read_exact(&mut buf)?;
        String::from_utf8(buf).map_err(|_| invalid("a header string is not UTF-8".into()))
    }

    /// Skips one metadata value of type `kind`, returning it when it is an unsigned integer
    /// (enough for `general.alignment`).
    fn value(&mut self, kind: u32) -> std::io::Result<Option<u64>> {
        Ok(match kind {
            0 | 1 | 7 => Some(self.bytes::<1>()?[0] as u64),
            2 | 3 => Some(u16::from_le_bytes(self.bytes()?) as u64),
            4..=6 => Some(self.u32()? as u64),
            10..=12 => Some(self.u64()?),
            8 => {
                self.string()?;
                None
            }
            9 => {
                let item = self.u32()?;
                let n = self.count("array", 1 << 32)?;
                for _ in 0..n {
                    self.value(item)?;
                }
                None
            }
            other => return Err(invalid(format!("unknown metadata value type {other}"))),
        })
    }

    /// The tensor table (names without converter prefixes) and the data alignment.
    fn read_table(&mut self) -> std::io::Result<(HashMap<String, GgufTensor>, u64)> {
        if self.u32()? != MAGIC {
            return Err(invalid("not a GGUF file (bad magic)".into()));
        }
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(invalid(format!("GGUF version {version} is not supported (2 or 3)")));
        }
        let tensor_count = self.count("tensor", 1 << 20)?;
        let kv_count = self.count("metadata", 1 << 20)?;
        let mut alignment = DEFAULT_ALIGNMENT;
        for _ in 0..kv_count {
            let key = self.string()?;
            let kind = self.u32()?;
            let value = self.value(kind)?;
            if key == "general.alignment" {
                alignment = value
                    .filter(|&a| a > 0 && a.is_power_of_two())
                    .ok_or_else(|| invalid("general.alignment must be a power of two".into()))?;
            }
        }
        let mut tensors = HashMap::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = self.string()?;
            let dims = self.u32()? as usize;
            if dims == 0 || dims > 8 {
                return Err(invalid(format!("tensor `{name}` has {dims} dimensions")));
            }
            let mut shape = (0..dims).map(|_| self.u64().map(|d| d as usize)).collect::<std::io::Result<Vec<_>>>()?;
            shape.reverse();
            let ggml_type = ggml_type(self.u32()?)?;
            let offset = self.u64()?;
            let name = NAME_PREFIXES.iter().find_map(|p| name.strip_prefix(p)).unwrap_or(&name).to_string();
            tensors.insert(name, GgufTensor { shape, ggml_type, offset });
        }
        Ok((tensors, alignment))
    }
}
