//! Data-parallel training steps on the CPU.
//!
//! The demo model's matrices are small (a batch of 8 × 144 tokens at width 128): split across
//! two cores, each kernel waits on the other more than it computes (two threads measured no
//! faster than one). So a step instead splits its batch into one shard per core; each worker
//! runs the forward and backward pass of its shard on its own, with single-threaded kernels,
//! and the shards' gradients are summed. The random draws of a step are made before the split,
//! so the step computes the same loss whatever the number of workers, up to the order of
//! floating-point sums.

use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::Var;

/// A pool of worker threads, one per shard of a batch.
pub struct Workers {
    pool: rayon::ThreadPool,
    count: usize,
}

impl Workers {
    /// `count` workers (at least 1).
    pub fn new(count: usize) -> anyhow::Result<Self> {
        let count = count.max(1);
        let pool =
            rayon::ThreadPoolBuilder::new().num_threads(count).thread_name(|i| format!("train-worker-{i}")).build()?;
        Ok(Self { pool, count })
    }

    /// How many workers there are.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The shards of `batch` rows: as equal as they can be, at most one per worker, in order.
    pub fn shards(&self, batch: usize) -> Vec<Range<usize>> {
        let n = self.count.min(batch).max(1);
        (0..n).map(|i| (i * batch / n)..((i + 1) * batch / n)).collect()
    }

    /// Runs `f` on each shard of `batch` rows, each on its own worker; results in shard order.
    pub fn map_shards<T: Send>(
        &self,
        batch: usize,
        f: impl Fn(Range<usize>) -> anyhow::Result<T> + Sync,
    ) -> anyhow::Result<Vec<T>> {
        use rayon::prelude::*;
        let shards = self.shards(batch);
        self.pool.install(|| shards.into_par_iter().map(&f).collect())
    }

    /// Runs `f` on every item of `items` across the workers; results in order.
    pub fn map<I: Sync, T: Send>(
        &self,
        items: &[I],
        f: impl Fn(&I) -> anyhow::Result<T> + Sync,
    ) -> anyhow::Result<Vec<T>> {
        use rayon::prelude::*;
        self.pool.install(|| items.par_iter().map(&f).collect())
    }
}

/// The cores this process may use: the default number of workers.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Makes candle's own kernels single-threaded, for the whole process: with one worker per core,
/// threads inside each kernel would only wait for each other. candle reads its thread count from
/// the environment (`RAYON_NUM_THREADS`, `CANDLE_NUM_THREADS`), so this must run before the
/// process's first tensor operation and before it starts other threads.
pub fn single_threaded_kernels() {
    std::env::set_var("RAYON_NUM_THREADS", "1");
    std::env::set_var("CANDLE_NUM_THREADS", "1");
}

/// The sum of the shards' gradients of `vars`, shard by shard in order.
pub fn sum_gradients(mut shards: Vec<GradStore>, vars: &[(String, Var)]) -> candle_core::Result<GradStore> {
    if shards.is_empty() {
        candle_core::bail!("no shard gradients to sum");
    }
    let mut total = shards.remove(0);
    for mut shard in shards {
        for (_, var) in vars {
            let Some(grad) = shard.remove(var.as_tensor()) else { continue };
            let sum = match total.remove(var.as_tensor()) {
                Some(earlier) => (earlier + grad)?,
                None => grad,
            };
            total.insert(var.as_tensor(), sum);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_in_order() {
        let workers = Workers::new(2).unwrap();
        assert_eq!(workers.shards(8), vec![0..4, 4..8]);
        assert_eq!(workers.shards(5), vec![0..2, 2..5]);
        assert_eq!(workers.shards(1), vec![0..1], "no empty shard");
        assert_eq!(Workers::new(3).unwrap().shards(7), vec![0..2, 2..4, 4..7]);
    }

    #[test]
    fn shard_gradients_add_up_to_the_whole_batch() -> anyhow::Result<()> {
        use candle_core::{Device, Tensor};
        let w = Var::new(&[1f32, -2.0, 0.5], &Device::Cpu)?;
        let x = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0], [-1.0, 0.0, 2.0]], &Device::Cpu)?;
        let loss =
            |rows: Range<usize>| x.narrow(0, rows.start, rows.len())?.broadcast_mul(w.as_tensor())?.sqr()?.sum_all();
        let whole = loss(0..3)?.backward()?;
        let workers = Workers::new(2)?;
        let parts = workers.map_shards(3, |rows| Ok(loss(rows)?.backward()?))?;
        let summed = sum_gradients(parts, &[("w".into(), w.clone())])?;
        let (a, b) =
            (whole.get(w.as_tensor()).unwrap().to_vec1::<f32>()?, summed.get(w.as_tensor()).unwrap().to_vec1::<f32>()?);
        for (a, b) in a.iter().zip(&b) {
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
        Ok(())
    }
}
