//! LoRA adapters for the diffusion transformer, merged into its weights as they load.
//!
//! Three layouts are read, each mapped to the transformer's canonical (original Wan) module names
//! by the name map in [`super::names`]:
//! - **diffusers / PEFT**: `[transformer.]blocks.N.attn1.to_q.lora_A.weight` / `lora_B.weight`; the
//!   alpha comes from the `lora_adapter_metadata` JSON diffusers writes (`lora_alpha`, with PEFT's
//!   per-module `alpha_pattern` — the first key matching the end of the module's name as PEFT
//!   matches it — and `use_rslora`, which scales by `α/√r`), else it equals the rank (scale 1);
//!   ranks come from the matrices, so `rank_pattern` needs no reading;
//! - **kohya**: `lora_unet_blocks_N_self_attn_q.lora_down.weight` / `lora_up.weight` / `.alpha`;
//! - **ComfyUI / LightX2V**: `diffusion_model.blocks.N.self_attn.q.lora_down.weight` (or `lora_A`)
//!   / `lora_up.weight` / `.alpha`, plus full-weight `.diff` and bias `.diff_b` deltas.
//!
//! A module's weight becomes `W + s·(α/r)·B·A + s·diff` (and its bias `b + s·diff_b`) for every
//! adapter at strength `s`, computed in f32 before the weight takes the model's dtype, so a merged
//! model costs nothing per step. Keys that match no weight of the model, and deltas whose shape
//! differs from the weight's (a LoRA for another model size), are refused by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor};

use super::names::{canonical_to_diffusers, diffusers_to_canonical};
use super::{TensorShapes, Weights};
use crate::error::{invalid_input, Error, Result};

/// One LoRA file at a strength.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    path: PathBuf,
    strength: f64,
    /// Terms by module: a canonical name (`blocks.3.self_attn.q`), or a kohya stem still to be
    /// resolved against the model (`blocks_3_self_attn_q`).
    modules: BTreeMap<String, LoraTerm>,
    /// diffusers' global alpha (`lora_adapter_metadata.lora_alpha`), for modules without their own.
    default_alpha: Option<f64>,
    /// PEFT's rank-stabilised scaling `α/√r` (`use_rslora`) instead of `α/r`.
    rank_stabilised: bool,
}

/// What one adapter changes in one module.
#[derive(Debug, Clone, Default)]
struct LoraTerm {
    /// `A` (`lora_down`): `[rank, in]`.
    down: Option<Tensor>,
    /// `B` (`lora_up`): `[out, rank]`.
    up: Option<Tensor>,
    alpha: Option<f64>,
    /// A full-weight delta.
    diff: Option<Tensor>,
    /// A bias delta.
    diff_bias: Option<Tensor>,
}

/// Which part of a module's term a key holds.
enum Part {
    Down,
    Up,
    Alpha,
    Diff,
    DiffBias,
}

/// Builds the [`Part`] a key suffix names.
type PartOf = fn() -> Part;

const PARTS: &[(&str, PartOf)] = &[
    (".lora_A.weight", || Part::Down),
    (".lora_B.weight", || Part::Up),
    (".lora_down.weight", || Part::Down),
    (".lora_up.weight", || Part::Up),
    (".alpha", || Part::Alpha),
    (".diff_b", || Part::DiffBias),
    (".diff", || Part::Diff),
];

/// Prefixes trainers put before the transformer's own names.
const PREFIXES: &[&str] = &["base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer."];

impl LoraAdapter {
    /// Reads a LoRA file (`.safetensors`) to apply at `strength` (1 = as trained).
    pub fn load(path: &Path, strength: f64) -> Result<Self> {
        if !strength.is_finite() {
            return Err(invalid_input!("the LoRA strength {strength} is not a number"));
        }
        let bad = |why: String| invalid_input!("{} is not a LoRA file: {why}", path.display());
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let metadata = PeftMetadata::read(&bytes).map_err(bad)?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
        let mut modules: BTreeMap<String, LoraTerm> = BTreeMap::new();
        let mut unknown = Vec::new();
        for (key, tensor) in tensors {
            let Some((module, stem, part)) = split_key(&key) else {
                unknown.push(key);
                continue;
            };
            let term = modules.entry(module).or_default();
            if let Some(alpha) = metadata.pattern_alpha(&stem) {
                term.alpha = Some(alpha);
            }
            let tensor = tensor.to_dtype(DType::F32)?;
            match part {
                Part::Down => term.down = Some(tensor),
                Part::Up => term.up = Some(tensor),
                Part::Alpha => term.alpha = Some(tensor.flatten_all()?.to_vec1::<f32>()?[0] as f64),
                Part::Diff => term.diff = Some(tensor),
                Part::DiffBias => term.diff_bias = Some(tensor),
            }
        }
        if !unknown.is_empty() {
            unknown.sort();
            return Err(bad(format!("keys that are not LoRA weights: {}", first_few(&unknown))));
        }
        if let Some((module, _)) = modules.iter().find(|(_, t)| t.down.is_some() != t.up.is_some()) {
            return Err(bad(format!("{module} has one of its two low-rank matrices, not both")));
        }
        Ok(Self {
            path: path.to_path_buf(),
            strength,
            modules,
            default_alpha: metadata.alpha,
            rank_stabilised: metadata.rank_stabilised,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its strength.
    pub fn strength(&self) -> f64 {
        self.strength
    }
}

/// How a step- or guidance-distilled adapter is meant to be sampled, as it declares it.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistilledSampling {
    /// Steps it was distilled to.
    pub steps: Option<usize>,
    /// Guidance scale (1 for a guidance-distilled adapter).
    pub guidance: Option<f64>,
    /// The solver (`euler`, `lcm`, …).
    pub sampler: Option<String>,
    /// Flow shift.
    pub shift: Option<f64>,
}

/// The metadata key a LoRA file declares its sampling in: a JSON object of
/// [`DistilledSampling`]'s fields, e.g. `{"steps": 4, "guidance": 1, "sampler": "euler"}`.
pub const SAMPLING_METADATA_KEY: &str = "skyreels_sampling";

/// File-name marks of the guidance-distilled adapters people use (LightX2V's
/// `…cfg_step_distill…`, `…CfgDistill…`, CausVid): they are sampled without guidance.
const GUIDANCE_DISTILLED_NAMES: &[&str] = &["cfg_step_distill", "cfgdistill", "cfg_distill", "causvid"];

/// How the LoRA file at `path` says it should be sampled: its [`SAMPLING_METADATA_KEY`]
/// metadata, else guidance 1 when its name marks a guidance-distilled adapter, else `None`.
/// Only the file's header is read.
pub fn declared_sampling(path: &Path) -> Result<Option<DistilledSampling>> {
    let bad = |why: String| invalid_input!("{} is not a LoRA file: {why}", path.display());
    let header = read_header(path)?;
    let metadata: Option<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_slice::<serde_json::Value>(&header)
            .map_err(|e| bad(format!("its header: {e}")))?
            .get("__metadata__")
            .and_then(|m| m.as_object().cloned());
    if let Some(raw) = metadata.as_ref().and_then(|m| m.get(SAMPLING_METADATA_KEY)).and_then(|v| v.as_str()) {
        let declared: DistilledSampling =
            serde_json::from_str(raw).map_err(|e| bad(format!("its `{SAMPLING_METADATA_KEY}` metadata: {e}")))?;
        return Ok(Some(declared));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let compact = name.replace(['-', ' '], "_");
    Ok(GUIDANCE_DISTILLED_NAMES
        .iter()
        .any(|mark| compact.contains(mark))
        .then(|| DistilledSampling { guidance: Some(1.0), ..Default::default() }))
}

/// The JSON header of a safetensors file, without reading its tensors.
fn read_header(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length).map_err(io)?;
    let length = u64::from_le_bytes(length);
    if length > 100 << 20 {
        return Err(invalid_input!("{} is not a LoRA file: its header claims {length} bytes", path.display()));
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header).map_err(io)?;
    Ok(header)
}

/// What the PEFT config diffusers stores as `lora_adapter_metadata` says about scaling.
#[derive(Default)]
struct PeftMetadata {
    alpha: Option<f64>,
    /// `alpha_pattern` in the file's order: PEFT takes the first key that matches.
    alpha_pattern: Vec<(regex::Regex, f64)>,
    rank_stabilised: bool,
}

impl PeftMetadata {
    fn read(bytes: &[u8]) -> std::result::Result<Self, String> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
        let Some(raw) = meta.metadata().as_ref().and_then(|m| m.get("lora_adapter_metadata")) else {
            return Ok(Self::default());
        };
        let config: PeftConfig = serde_json::from_str(raw).map_err(|e| format!("its metadata: {e}"))?;
        let alpha_pattern = config
            .alpha_pattern
            .0
            .into_iter()
            .map(|(key, alpha)| {
                // PEFT: `re.match(rf"(.*\.)?({key})$", module_name)`.
                let regex = regex::Regex::new(&format!("^(?:.*\\.)?(?:{key})$"))
                    .map_err(|e| format!("its alpha_pattern key `{key}`: {e}"))?;
                Ok((regex, alpha))
            })
            .collect::<std::result::Result<_, String>>()?;
        Ok(Self { alpha: config.lora_alpha, alpha_pattern, rank_stabilised: config.use_rslora })
    }

    /// The `alpha_pattern` alpha of a diffusers module name, if a key matches it.
    fn pattern_alpha(&self, module: &str) -> Option<f64> {
        self.alpha_pattern.iter().find(|(regex, _)| regex.is_match(module)).map(|(_, alpha)| *alpha)
    }
}

/// The fields of a PEFT `LoraConfig` that scale the update.
#[derive(serde::Deserialize)]
struct PeftConfig {
    #[serde(default)]
    lora_alpha: Option<f64>,
    #[serde(default)]
    alpha_pattern: OrderedMap,
    #[serde(default)]
    use_rslora: bool,
}

/// A JSON object's entries in document order (PEFT's first-match rule depends on it).
#[derive(Default)]
struct OrderedMap(Vec<(String, f64)>);

impl<'de> serde::Deserialize<'de> for OrderedMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = OrderedMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of numbers")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> std::result::Result<OrderedMap, M::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, f64>()? {
                    entries.push(entry);
                }
                Ok(OrderedMap(entries))
            }
            fn visit_unit<E>(self) -> std::result::Result<OrderedMap, E> {
                Ok(OrderedMap::default())
            }
        }
        d.deserialize_any(Entries)
    }
}

/// `(module, stem, part)` of a key: prefixes dropped, diffusers names made canonical (the stem
/// keeps the name as the file spells it, for PEFT's patterns); kohya stems are kept with their
/// underscores (resolved against the model in [`LoraWeights::new`]).
fn split_key(key: &str) -> Option<(String, String, Part)> {
    let (stem, part) = PARTS.iter().find_map(|(suffix, part)| Some((key.strip_suffix(suffix)?, part())))?;
    if let Some(kohya) = stem.strip_prefix("lora_unet_").or_else(|| stem.strip_prefix("lora_transformer_")) {
        return Some((kohya.to_string(), kohya.to_string(), part));
    }
    let stem = PREFIXES.iter().fold(stem, |s, prefix| s.strip_prefix(prefix).unwrap_or(s));
    Some((diffusers_to_canonical(stem), stem.to_string(), part))
}

fn first_few(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
    let more =
        if names.len() > shown.len() { format!(" and {} more", names.len() - shown.len()) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// A weight source with adapters merged in: the tensors of `base`, changed where an adapter
/// has a term.
pub struct LoraWeights<'a> {
    base: &'a dyn Weights,
    /// Per canonical module: each adapter's strength, alpha and term.
    terms: BTreeMap<String, Vec<Bound<'a>>>,
}

/// One adapter's term bound to a module: its strength, the adapter's scaling, the term.
type Bound<'a> = (f64, Scaling, &'a LoraTerm);

/// How an adapter scales its low-rank products: its default alpha, and `α/√r` or `α/r`.
#[derive(Debug, Clone, Copy)]
struct Scaling {
    default_alpha: Option<f64>,
    rank_stabilised: bool,
}

impl<'a> LoraWeights<'a> {
    /// Binds `adapters` to the model whose weights `base` holds (`shapes` describing them):
    /// every module must name a weight of the model with the shape the adapter changes.
    pub fn new(base: &'a dyn Weights, shapes: &dyn TensorShapes, adapters: &'a [LoraAdapter]) -> Result<Self> {
        Ok(Self { base, terms: bind(adapters, shapes)? })
    }
}

/// Every adapter's terms by the canonical module they change: kohya stems resolved, unknown
/// modules and misfitting shapes refused.
fn bind<'a>(adapters: &'a [LoraAdapter], shapes: &dyn TensorShapes) -> Result<BTreeMap<String, Vec<Bound<'a>>>> {
    let mut terms: BTreeMap<String, Vec<Bound<'a>>> = BTreeMap::new();
    for adapter in adapters {
        let mut unknown = Vec::new();
        for (module, term) in &adapter.modules {
            let canonical = if shapes.has_tensor(&format!("{module}.weight")) {
                module.clone()
            } else if let Some(found) = kohya_module(module, shapes) {
                found
            } else {
                unknown.push(module.clone());
                continue;
            };
            check_shapes(adapter, &canonical, term, shapes)?;
            let scaling = Scaling { default_alpha: adapter.default_alpha, rank_stabilised: adapter.rank_stabilised };
            terms.entry(canonical).or_default().push((adapter.strength, scaling, term));
        }
        if !unknown.is_empty() {
            return Err(invalid_input!(
                "the LoRA {} changes modules this model does not have: {} (a LoRA for another model?)",
                adapter.path.display(),
                first_few(&unknown)
            ));
        }
    }
    Ok(terms)
}

/// The updates of every module `adapters` change, to apply beside the weights (unmerged), keyed
/// by canonical module name; shapes and names are checked as for merging.
pub fn layer_adapters(
    adapters: &[LoraAdapter],
    shapes: &dyn TensorShapes,
) -> Result<BTreeMap<String, Vec<crate::nn::Adapter>>> {
    let mut layers = BTreeMap::new();
    for (module, terms) in bind(adapters, shapes)? {
        let out = shapes.tensor_shape(&format!("{module}.weight"))?[0];
        let updates = terms
            .into_iter()
            .map(|(strength, scaling, term)| {
                let low_rank = match (&term.down, &term.up) {
                    (Some(down), Some(up)) => Some((down.flatten_from(1)?, up.clone(), term.scale(strength, scaling)?)),
                    _ => None,
                };
                let weight = term.diff.as_ref().map(|d| d.reshape((out, ()))?.affine(strength, 0.0)).transpose()?;
                let bias = term.diff_bias.as_ref().map(|d| d.flatten_all()?.affine(strength, 0.0)).transpose()?;
                Ok(crate::nn::Adapter { low_rank, weight, bias })
            })
            .collect::<Result<Vec<_>>>()?;
        layers.insert(module, updates);
    }
    Ok(layers)
}

impl LoraTerm {
    /// `strength · α / rank` (or `/ √rank`, rank-stabilised) of the low-rank part.
    fn scale(&self, strength: f64, scaling: Scaling) -> Result<f64> {
        let rank = self.down.as_ref().map_or(Ok(1), |d| d.dim(0))? as f64;
        let alpha = self.alpha.or(scaling.default_alpha).unwrap_or(rank);
        Ok(strength * alpha / if scaling.rank_stabilised { rank.sqrt() } else { rank })
    }
}

impl LoraWeights<'_> {
    /// The weight (or bias) delta of `module`, in f32 on the CPU, shaped `shape`.
    fn delta(&self, module: &str, bias: bool, shape: &[usize]) -> Result<Option<Tensor>> {
        let Some(terms) = self.terms.get(module) else { return Ok(None) };
        let mut sum: Option<Tensor> = None;
        for &(strength, scaling, term) in terms {
            let mut parts = Vec::new();
            if bias {
                parts.extend(term.diff_bias.iter().map(|d| d.affine(strength, 0.0)));
            } else {
                if let (Some(down), Some(up)) = (&term.down, &term.up) {
                    let scale = term.scale(strength, scaling)?;
                    parts.push(up.matmul(&down.flatten_from(1)?)?.affine(scale, 0.0));
                }
                parts.extend(term.diff.iter().map(|d| d.affine(strength, 0.0)));
            }
            for part in parts {
                let part = part?.reshape(shape)?;
                sum = Some(match sum {
                    Some(s) => (s + part)?,
                    None => part,
                });
            }
        }
        Ok(sum)
    }
}

impl Weights for LoraWeights<'_> {
    fn tensor(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        let split =
            name.strip_suffix(".weight").map(|m| (m, false)).or_else(|| name.strip_suffix(".bias").map(|m| (m, true)));
        let delta = match split {
            Some((module, bias)) => self.delta(module, bias, shape)?,
            None => None,
        };
        match delta {
            None => self.base.tensor(name, shape, dtype, device),
            Some(delta) => {
                let merged = (self.base.tensor(name, shape, DType::F32, device)? + delta.to_device(device)?)?;
                Ok(merged.to_dtype(dtype)?)
            }
        }
    }

    fn quantized(&self, name: &str, shape: &[usize], device: &Device) -> Option<Result<QTensor>> {
        // A changed weight is merged in full precision; the others stay quantised.
        let module = name.strip_suffix(".weight").or_else(|| name.strip_suffix(".bias"))?;
        if self.terms.contains_key(module) {
            return None;
        }
        self.base.quantized(name, shape, device)
    }
}

/// The canonical module a kohya stem (`blocks_3_self_attn_q`, `blocks_3_attn1_to_q`) names.
fn kohya_module(stem: &str, shapes: &dyn TensorShapes) -> Option<String> {
    let (prefix, rest) = match stem.strip_prefix("blocks_") {
        Some(after) => {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let rest = after.get(digits..)?.strip_prefix('_')?;
            (format!("blocks.{}.", &after[..digits]), rest)
        }
        None => (String::new(), stem),
    };
    KOHYA_MODULES.iter().find_map(|&canonical| {
        let diffusers = canonical_to_diffusers(&format!("blocks.0.{canonical}"));
        let diffusers = diffusers.strip_prefix("blocks.0.").unwrap_or(&diffusers).to_string();
        let top_diffusers = canonical_to_diffusers(canonical);
        let matches = [canonical.to_string(), diffusers, top_diffusers].iter().any(|n| n.replace('.', "_") == rest);
        let name = format!("{prefix}{canonical}");
        (matches && shapes.has_tensor(&format!("{name}.weight"))).then_some(name)
    })
}

/// The modules LoRAs change, in canonical spelling (block modules without their `blocks.N.`).
const KOHYA_MODULES: &[&str] = &[
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "cross_attn.k_img",
    "cross_attn.v_img",
    "ffn.0",
    "ffn.2",
    "text_embedding.0",
    "text_embedding.2",
    "time_embedding.0",
    "time_embedding.2",
    "time_projection.1",
    "head.head",
    "img_emb.proj.1",
    "img_emb.proj.3",
    "patch_embedding",
];

/// Refuses a term whose delta does not fit the module's weight or bias.
fn check_shapes(adapter: &LoraAdapter, module: &str, term: &LoraTerm, shapes: &dyn TensorShapes) -> Result<()> {
    let weight = shapes.tensor_shape(&format!("{module}.weight"))?;
    let (out, inputs) = (weight[0], weight[1..].iter().product::<usize>());
    let misfit = |what: &str, theirs: String| {
        invalid_input!(
            "the LoRA {} does not fit this model: {module} is {out}×{inputs} here, its {what} is {theirs} \
             (a LoRA for another model size?)",
            adapter.path.display()
        )
    };
    if let (Some(down), Some(up)) = (&term.down, &term.up) {
        let (d, u) = (down.dims(), up.dims());
        let down_in = d[1..].iter().product::<usize>();
        if d[0] != u.get(1).copied().unwrap_or(0) || u[0] != out || down_in != inputs {
            return Err(misfit("low-rank product", format!("{}×{down_in}", u[0])));
        }
    }
    if let Some(diff) = &term.diff {
        if diff.elem_count() != out * inputs {
            return Err(misfit("weight delta", format!("{:?}", diff.dims())));
        }
    }
    if let Some(diff_bias) = &term.diff_bias {
        if diff_bias.elem_count() != out {
            return Err(misfit("bias delta", format!("{:?}", diff_bias.dims())));
        }
    }
    Ok(())
}
