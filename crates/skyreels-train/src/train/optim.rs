//! AdamW with decoupled weight decay, global gradient-norm clipping and an exponential moving
//! average of the weights — written here (not candle-nn's `AdamW`) because resuming a run needs
//! the optimiser's moments saved and restored exactly.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
    /// Decoupled weight decay (applied as `w ← w·(1 − lr·wd)`).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// AdamW state for a set of named parameters.
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<(String, Var)>,
    first: BTreeMap<String, Tensor>,
    second: BTreeMap<String, Tensor>,
    step: u64,
}

impl AdamW {
    /// An optimiser over `params` with zeroed moments.
    pub fn new(params: Vec<(String, Var)>, config: AdamWConfig) -> candle_core::Result<Self> {
        let mut first = BTreeMap::new();
        let mut second = BTreeMap::new();
        for (name, var) in &params {
            first.insert(name.clone(), var.zeros_like()?);
            second.insert(name.clone(), var.zeros_like()?);
        }
        Ok(Self { config, params, first, second, step: 0 })
    }

    /// Applies one update with learning rate `lr` from `grads`; parameters without a gradient
    /// (frozen ones) are left exactly as they are, without weight decay.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<()> {
        self.step += 1;
        let c = self.config;
        let correction1 = 1.0 - c.beta1.powi(self.step as i32);
        let correction2 = 1.0 - c.beta2.powi(self.step as i32);
        for (name, var) in &self.params {
            let Some(grad) = grads.get(var.as_tensor()) else { continue };
            let m = self.first.get_mut(name).expect("moments exist for every parameter");
            *m = ((&*m * c.beta1)? + (grad * (1.0 - c.beta1))?)?;
            let v = self.second.get_mut(name).expect("moments exist for every parameter");
            *v = ((&*v * c.beta2)? + (grad.sqr()? * (1.0 - c.beta2))?)?;
            let m_hat = (&*m / correction1)?;
            let v_hat = (&*v / correction2)?;
            let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - lr * c.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments, for a checkpoint (`adam.m.<name>`, `adam.v.<name>`); the step count is
    /// the run's own.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut tensors = Vec::new();
        for (name, m) in &self.first {
            tensors.push((format!("adam.m.{name}"), m.clone()));
        }
        for (name, v) in &self.second {
            tensors.push((format!("adam.v.{name}"), v.clone()));
        }
        tensors
    }

    /// Restores what [`state`](Self::state) saved.
    pub fn restore(&mut self, step: u64, tensors: &BTreeMap<String, Tensor>) -> anyhow::Result<()> {
        for (name, _) in &self.params {
            let find = |kind: &str| {
                tensors
                    .get(&format!("adam.{kind}.{name}"))
                    .cloned()
                    .ok_or_else(|| anyhow::anyhow!("the checkpoint has no optimiser state for `{name}`"))
            };
            self.first.insert(name.clone(), find("m")?);
            self.second.insert(name.clone(), find("v")?);
        }
        self.step = step;
        Ok(())
    }
}

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before
/// clipping (what the loss log records).
pub fn clip_grad_norm(grads: &mut GradStore, params: &[(String, Var)], max_norm: f64) -> candle_core::Result<f64> {
    let mut total = 0f64;
    for (_, var) in params {
        if let Some(g) = grads.get(var.as_tensor()) {
            total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
    }
    let norm = total.sqrt();
    if norm > max_norm && norm.is_finite() {
        let scale = max_norm / (norm + 1e-12);
        for (_, var) in params {
            if let Some(g) = grads.remove(var.as_tensor()) {
                grads.insert(var.as_tensor(), (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// Exponential moving average of the weights: `ema ← ema + (1 − d)·(w − ema)`, with the usual
/// warm-up `d = min(decay, (1 + n)/(10 + n))` so early averages are not dominated by the
/// random initialisation.
pub struct Ema {
    decay: f64,
    updates: u64,
    shadow: BTreeMap<String, Tensor>,
}

impl Ema {
    /// Starts the average at the current weights.
    pub fn new(params: &[(String, Var)], decay: f64) -> Self {
        let shadow = params.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
        Self { decay, updates: 0, shadow }
    }

    /// Folds the current weights into the average.
    pub fn update(&mut self, params: &[(String, Var)]) -> candle_core::Result<()> {
        self.updates += 1;
        let n = self.updates as f64;
        let d = self.decay.min((1.0 + n) / (10.0 + n));
        for (name, var) in params {
            if let Some(s) = self.shadow.get_mut(name) {
                // Written as a step towards `w` so a weight equal to its average (a frozen one
                // started at it) keeps it bit for bit.
                *s = (&*s + ((var.as_tensor().detach() - &*s)? * (1.0 - d))?)?;
            }
        }
        Ok(())
    }

    /// The averaged weights by name.
    pub fn weights(&self) -> &BTreeMap<String, Tensor> {
        &self.shadow
    }

    /// Updates folded in so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Restores a saved average.
    pub fn restore(&mut self, updates: u64, weights: BTreeMap<String, Tensor>) {
        self.updates = updates;
        self.shadow = weights;
    }
}
