//! Choosing the next token from logits: greedy, or seeded sampling with repetition penalty,
//! top-k, top-p, min-p and temperature, applied in llama.cpp's order. Buffers are sized once;
//! sampling allocates nothing.

/// Sampling settings.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    /// 0 = greedy (argmax after the repetition penalty).
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely (0 = none).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this (1 = off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// A seeded sampler with its scratch.
#[derive(Clone, Debug)]
pub struct Sampler {
    pub params: SamplerParams,
    state: u64,
    cand: Vec<(f32, u32)>,
    recent: Vec<u32>,
    recent_at: usize,
}

impl Sampler {
    pub fn new(params: SamplerParams, n_vocab: usize) -> Self {
        let state = params.seed ^ 0x9E37_79B9_7F4A_7C15;
        let n = params.repeat_last_n;
        Sampler {
            params,
            state,
            cand: Vec::with_capacity(n_vocab),
            recent: Vec::with_capacity(n),
            recent_at: 0,
        }
    }

    /// Records a token (prompt or generated) for the repetition penalty.
    pub fn accept(&mut self, token: u32) {
        let n = self.params.repeat_last_n;
        if n == 0 {
            return;
        }
        if self.recent.len() < n {
            self.recent.push(token);
        } else {
            self.recent[self.recent_at] = token;
            self.recent_at = (self.recent_at + 1) % n;
        }
    }

    /// Forgets the recent tokens.
    pub fn reset(&mut self) {
        self.recent.clear();
        self.recent_at = 0;
    }

    /// splitmix64, uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Picks the next token.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        self.cand.clear();
        self.cand
            .extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        if p.repeat_penalty != 1.0 {
            for &t in &self.recent {
                if let Some(c) = self.cand.get_mut(t as usize) {
                    c.0 = if c.0 > 0.0 {
                        c.0 / p.repeat_penalty
                    } else {
                        c.0 * p.repeat_penalty
                    };
                }
            }
        }
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.temperature <= 0.0 {
            return self
                .cand
                .iter()
                .min_by(|a, b| by_logit(a, b))
                .map_or(0, |c| c.1);
        }
        let k = if p.top_k == 0 {
            self.cand.len()
        } else {
            p.top_k.min(self.cand.len())
        };
        if k < self.cand.len() {
            self.cand.select_nth_unstable_by(k, by_logit);
            self.cand.truncate(k);
        }
        self.cand.sort_unstable_by(by_logit);
        // Probabilities at temperature 1 for top-p and min-p (llama.cpp applies them before the
        // temperature), then the temperature on what is left.
        let max = self.cand[0].0;
        let total: f32 = self.cand.iter().map(|c| (c.0 - max).exp()).sum();
        let mut keep = self.cand.len();
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, c) in self.cand.iter().enumerate() {
                cum += (c.0 - max).exp() / total;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = max + p.min_p.ln();
            keep = keep.min(self.cand.iter().take_while(|c| c.0 >= floor).count().max(1));
        }
        self.cand.truncate(keep);
        let t = p.temperature;
        let total: f32 = self.cand.iter().map(|c| ((c.0 - max) / t).exp()).sum();
        let mut r = self.uniform() * total;
        for c in &self.cand {
            r -= ((c.0 - max) / t).exp();
            if r <= 0.0 {
                return c.1;
            }
        }
        self.cand.last().map_or(0, |c| c.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax_and_penalty_applies() {
        let mut s = Sampler::new(
            SamplerParams {
                temperature: 0.0,
                repeat_penalty: 2.0,
                ..Default::default()
            },
            4,
        );
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, -1.0]), 1);
        s.accept(1);
        // 3.0 / 2 = 1.5 < 2.0
        assert_eq!(s.sample(&[0.1, 3.0, 2.0, -1.0]), 2);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let params = SamplerParams {
            top_k: 3,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            temperature: 1.5,
            ..Default::default()
        };
        let mut top3: Vec<u32> = (0..100u32).collect();
        top3.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        top3.truncate(3);
        let mut a = Sampler::new(params.clone(), 100);
        let mut b = Sampler::new(params, 100);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let (x, y) = (a.sample(&logits), b.sample(&logits));
            assert_eq!(x, y);
            assert!(top3.contains(&x));
            seen.insert(x);
        }
        assert_eq!(
            seen.len(),
            3,
            "all of the top 3 should be drawn at temperature 1.5"
        );
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let params = SamplerParams {
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            seed: 7,
            temperature: 1.0,
            ..Default::default()
        };
        let mut s = Sampler::new(params, 3);
        // exp(-1) < 0.5: only token 0 survives.
        for _ in 0..50 {
            assert_eq!(s.sample(&[1.0, 0.0, -5.0]), 0);
        }
    }
}
