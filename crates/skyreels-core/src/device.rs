//! Where the engine computes: the `--device` choice, opening it, describing it, and the
//! precision each model computes in there.
//!
//! Every front end (the CLI, a server, a library user) goes through [`DeviceChoice`] so that an
//! unknown device, a GPU this binary was not built for and a GPU index that does not exist are
//! refused with the same sentences everywhere, before any work.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};
use serde::Serialize;

use crate::error::{Error, Result};

/// The device a user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The first GPU when this binary was built with GPU support and one is present, else the CPU.
    #[default]
    Auto,
    /// The CPU (exact f32 reference path).
    Cpu,
    /// The CUDA GPU with this index.
    Cuda(usize),
    /// The Metal GPU with this index (Apple).
    Metal(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    /// Parses `auto`, `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N` (case-insensitive).
    fn from_str(text: &str) -> Result<Self> {
        let lower = text.trim().to_ascii_lowercase();
        let (kind, index) = match lower.split_once(':') {
            Some((kind, index)) => (kind, Some(index)),
            None => (lower.as_str(), None),
        };
        let unknown = || Error::UnknownDevice(text.to_string());
        let index = match index {
            None => 0,
            Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                digits.parse().map_err(|_| unknown())?
            }
            Some(_) => return Err(unknown()),
        };
        match (kind, lower.contains(':')) {
            ("auto", false) => Ok(Self::Auto),
            ("cpu", false) => Ok(Self::Cpu),
            ("cuda" | "gpu", _) => Ok(Self::Cuda(index)),
            ("metal", _) => Ok(Self::Metal(index)),
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::Metal(i) => write!(f, "metal:{i}"),
        }
    }
}

/// The GPU backends this binary was built with, for messages and `--version`-style reports.
pub fn built_backends() -> Vec<&'static str> {
    let mut backends = Vec::new();
    if cfg!(feature = "cuda") {
        backends.push("cuda");
    }
    if cfg!(feature = "cudnn") {
        backends.push("cudnn");
    }
    if cfg!(feature = "flash-attn") {
        backends.push("flash-attn");
    }
    if cfg!(feature = "metal") {
        backends.push("metal");
    }
    backends
}

impl DeviceChoice {
    /// Opens the device, or says in one sentence why it cannot be used.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Auto => Ok(auto_device()),
            Self::Cuda(index) => open_cuda(index),
            Self::Metal(index) => open_metal(index),
        }
    }
}

/// The first usable GPU, else the CPU.
fn auto_device() -> Device {
    if cfg!(feature = "cuda") && cuda_device_count() > 0 {
        if let Ok(device) = open_cuda(0) {
            return device;
        }
    }
    if cfg!(feature = "metal") {
        if let Ok(device) = open_metal(0) {
            return device;
        }
    }
    Device::Cpu
}

/// Number of CUDA devices the driver reports (0 without a driver or without CUDA support).
pub fn cuda_device_count() -> usize {
    #[cfg(feature = "cuda")]
    let count = {
        use candle_core::cuda_backend::cudarc::driver::CudaContext;
        CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
    };
    #[cfg(not(feature = "cuda"))]
    let count = 0;
    count
}

fn open_cuda(index: usize) -> Result<Device> {
    if !cfg!(feature = "cuda") {
        return Err(Error::DeviceUnavailable(format!(
            "this skyreels binary was built without CUDA support, so `cuda:{index}` cannot be used \
             (build one with tools/cuda/build.sh, or pass --device cpu)"
        )));
    }
    let count = cuda_device_count();
    if index >= count {
        return Err(Error::DeviceUnavailable(match count {
            0 => format!("there is no CUDA device {index}: the CUDA driver reports no GPU on this machine"),
            n => format!("there is no CUDA device {index}: this machine has {n} (cuda:0 to cuda:{})", n - 1),
        }));
    }
    Device::new_cuda(index).map_err(|e| Error::DeviceUnavailable(format!("cannot open CUDA device {index}: {e}")))
}

fn open_metal(index: usize) -> Result<Device> {
    if !cfg!(feature = "metal") {
        return Err(Error::DeviceUnavailable(format!(
            "this skyreels binary was built without Metal support, so `metal:{index}` cannot be used \
             (build with --features metal on a Mac, or pass --device cpu)"
        )));
    }
    Device::new_metal(index).map_err(|e| Error::DeviceUnavailable(format!("cannot open Metal device {index}: {e}")))
}

/// What a run records about where it computed (the sidecar, `check`, `bench`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    /// `cpu`, `cuda:N` or `metal:N`.
    pub device: String,
    /// The processor's or GPU's name.
    pub name: String,
    /// The GPU driver's version, when there is one.
    pub driver: Option<String>,
    /// The device's memory in MiB, when it has its own.
    pub memory_mib: Option<u64>,
}

impl DeviceInfo {
    /// Describes `device`.
    pub fn of(device: &Device) -> Self {
        match device {
            Device::Cpu => Self { device: "cpu".into(), name: cpu_name(), driver: None, memory_mib: None },
            #[cfg(feature = "cuda")]
            Device::Cuda(cuda) => cuda_info(cuda),
            other => Self {
                device: match other.location() {
                    candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
                    candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
                    candle_core::DeviceLocation::Cpu => "cpu".into(),
                },
                name: "GPU".into(),
                driver: None,
                memory_mib: None,
            },
        }
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.device, self.name)?;
        if let Some(mib) = self.memory_mib {
            write!(f, ", {:.1} GiB", mib as f64 / 1024.0)?;
        }
        if let Some(driver) = &self.driver {
            write!(f, ", driver {driver}")?;
        }
        f.write_str(")")
    }
}

/// The CPU model from `/proc/cpuinfo` (Linux), else the architecture, with the vector
/// extensions that decide the CPU kernels' speed (`AMD EPYC, AVX2`; `Intel Xeon Processor,
/// AVX-512, avx512_bf16, amx_bf16`): machines that report the same model name can differ.
pub fn cpu_name() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        text.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
    };
    let name = field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let flags = field("flags").unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    let mut parts = vec![name];
    if has("avx512f") {
        parts.push("AVX-512".into());
    } else if has("avx2") {
        parts.push("AVX2".into());
    }
    parts.extend(["avx512_bf16", "amx_bf16"].into_iter().filter(|f| has(f)).map(String::from));
    parts.join(", ")
}

#[cfg(feature = "cuda")]
fn cuda_info(cuda: &candle_core::CudaDevice) -> DeviceInfo {
    use candle_core::backend::BackendDevice;
    use candle_core::cuda_backend::cudarc::driver::sys;
    let ordinal = match cuda.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
        _ => 0,
    };
    let stream = cuda.cuda_stream();
    let context = stream.context();
    let driver = {
        let mut version = 0i32;
        // SAFETY: cuDriverGetVersion only writes the integer it is handed.
        match unsafe { sys::cuDriverGetVersion(&mut version) } {
            sys::CUresult::CUDA_SUCCESS => Some(format!("CUDA {}.{}", version / 1000, (version % 1000) / 10)),
            _ => None,
        }
    };
    DeviceInfo {
        device: format!("cuda:{ordinal}"),
        name: context.name().unwrap_or_else(|_| "CUDA GPU".into()),
        driver,
        memory_mib: context.total_mem().ok().map(|b| (b / (1 << 20)) as u64),
    }
}

/// Peak memory in use on a GPU, sampled between pieces of work (CUDA reports only what is in
/// use now, device-wide; sampling after each step catches the steady peak of a denoising loop).
#[derive(Debug, Clone, Default)]
pub struct DeviceMemoryMeter {
    peak_bytes: Option<u64>,
}

impl DeviceMemoryMeter {
    /// A meter with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the memory in use on `device` now (nothing on the CPU).
    pub fn sample(&mut self, device: &Device) {
        if let Some(used) = device_memory_in_use(device) {
            self.peak_bytes = Some(self.peak_bytes.map_or(used, |p| p.max(used)));
        }
    }

    /// The largest sample in MiB, or `None` on the CPU.
    pub fn peak_mib(&self) -> Option<u64> {
        self.peak_bytes.map(|b| b / (1 << 20))
    }
}

/// Bytes in use on a GPU (all processes), or `None` on the CPU.
pub fn device_memory_in_use(device: &Device) -> Option<u64> {
    // Waits for queued work first, so what it allocates is counted.
    device.synchronize().ok()?;
    device_memory(device).map(|(free, total)| total - free)
}

/// `(free, total)` bytes of a GPU's memory, device-wide, or `None` on the CPU.
pub fn device_memory(device: &Device) -> Option<(u64, u64)> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => {
            let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
            Some((free as u64, total as u64))
        }
        _ => None,
    }
}

/// What is kept off the GPU to save its memory (`--offload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Offload {
    /// Everything stays on the GPU.
    #[default]
    None,
    /// The transformer is parked in host memory while the VAE decodes each window, so the
    /// decoder's caches and the transformer's weights are never on the GPU together.
    Model,
    /// The transformer's blocks live in host memory and are copied to the GPU one at a time
    /// just before they run: the GPU holds one block's weights instead of all of them.
    Blocks,
}

impl FromStr for Offload {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "model" => Ok(Self::Model),
            "blocks" => Ok(Self::Blocks),
            _ => Err(Error::InvalidInput(format!("offload mode `{text}` is not one of none, model, blocks"))),
        }
    }
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Model => "model",
            Self::Blocks => "blocks",
        })
    }
}

/// A user's precision choice for a model (`--dtype`, `--vae-dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The model's default on the device (see [`Precision::resolve`]).
    #[default]
    Auto,
    /// Exact f32 arithmetic.
    F32,
    /// bf16 weights and activations (f32 norms, softmax and accumulation).
    Bf16,
}

impl FromStr for Precision {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(Error::InvalidInput(format!("precision `{text}` is not one of auto, f32, bf16"))),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl Precision {
    /// The dtype to compute in on `device`: an explicit choice is kept; `auto` is bf16 on a GPU
    /// and `cpu_default` on the CPU (where the arithmetic is f32 and the dtype only sets how
    /// weights are held).
    pub fn resolve(self, device: &Device, cpu_default: DType) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::Auto if device.is_cpu() => cpu_default,
            Self::Auto => DType::BF16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_print_back() {
        for (text, choice) in [
            ("auto", DeviceChoice::Auto),
            ("CPU", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
            ("metal:1", DeviceChoice::Metal(1)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice, "{text}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        for bad in ["tpu", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "auto:1", "", "cuda:99999999999999999999999"] {
            let err = bad.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(err.contains("auto, cpu, cuda"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_cpu_opens_and_auto_falls_back_to_it_without_a_gpu() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        if cuda_device_count() == 0 && !cfg!(feature = "metal") {
            assert!(DeviceChoice::Auto.open().unwrap().is_cpu());
        }
        let info = DeviceInfo::of(&Device::Cpu);
        assert_eq!(info.device, "cpu");
        assert!(!info.name.is_empty());
        let mut meter = DeviceMemoryMeter::new();
        meter.sample(&Device::Cpu);
        assert_eq!(meter.peak_mib(), None);
    }

    #[test]
    fn gpus_that_are_not_there_are_refused_in_one_sentence() {
        let err = DeviceChoice::Cuda(cuda_device_count()).open().unwrap_err().to_string();
        if cfg!(feature = "cuda") {
            assert!(err.contains("there is no CUDA device"), "{err}");
        } else {
            assert!(err.contains("built without CUDA support"), "{err}");
        }
        if !cfg!(feature = "metal") {
            let err = DeviceChoice::Metal(0).open().unwrap_err().to_string();
            assert!(err.contains("built without Metal support"), "{err}");
        }
    }

    #[test]
    fn auto_precision_is_bf16_only_on_a_gpu() {
        assert_eq!(Precision::Auto.resolve(&Device::Cpu, DType::F32), DType::F32);
        assert_eq!(Precision::Bf16.resolve(&Device::Cpu, DType::F32), DType::BF16);
        assert_eq!("BF16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert!("fp8".parse::<Precision>().is_err());
    }
}
