use candle_core::{Device, Tensor};
use skyreels_core::nn::{Conv3d, SpatialPadding};
fn main() {
    let d = Device::Cpu;
    let w = (Tensor::randn(0f32, 1.0, (96, 96, 3, 3, 3), &d).unwrap() * 0.05).unwrap();
    let conv = Conv3d::new(w, None, [1, 1, 1], SpatialPadding::uniform(1)).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 96, 7, 64, 64), &d).unwrap();
    for _ in 0..6 {
        let t = std::time::Instant::now();
        conv.forward(&x).unwrap();
        println!("{:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
}
