//! Small building blocks shared by the models: linear layers, norms, attention, positional codes.
//!
//! Everything here computes in the dtype of its input except the norms, which always
//! normalise in f32 (as the reference does) and hand back the input dtype.

mod activation;
mod attention;
mod channel_norm;
mod conv3d;
mod fused;
mod fused_attention;
mod gemm_bf16;
mod gemm_f32;
mod linear;
mod modulation;
mod norm;
mod rope;
mod sinusoid;
mod unfold;

pub use activation::gelu_tanh;
pub use attention::{
    attention, attention_heads_last, biased_attention_heads_last, rotary_attention, softmax_last_dim, AttentionMask,
    OffsetBias, GPU_SCORE_BUDGET,
};
pub use channel_norm::channel_norm_silu;
pub use conv3d::{Conv3d, SpatialPadding};
pub use linear::{gelu_feed_forward, quantize_fp8, Adapter, Linear, WeightFormat};
pub use modulation::{gated_residual, modulated_layer_norm};
pub use norm::{layer_norm, LayerNorm, RmsNorm};
pub use rope::Rope3d;
pub use sinusoid::timestep_sinusoid;
