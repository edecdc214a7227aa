//! CPython's `random` module, as far as TrEnv's workload generator uses it: the Mersenne
//! Twister (MT19937) seeded from an integer the way `random.seed(int)` seeds it, `random()`,
//! `getrandbits`, `randint`, `shuffle` and `normalvariate`, each consuming the generator exactly
//! as CPython 3.11 does, so that a workload generated here equals the one its driver generates.

const N: usize = 624;
const M: usize = 397;

/// CPython's `random.Random`.
pub struct PyRandom {
    mt: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.seed(seed)` for a non-negative integer below 2^64 (CPython splits the absolute
    /// value into 32-bit words, least significant first, and calls `init_by_array`).
    pub fn new(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        let mut r = PyRandom {
            mt: [0; N],
            index: N,
        };
        r.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
        }
        r.mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1] ^ (self.mt[i - 1] >> 30);
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev).wrapping_add(i as u32);
        }
        self.index = N;
    }

    /// The next 32 random bits (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        if self.index >= N {
            for k in 0..N {
                let y = (self.mt[k] & UPPER) | (self.mt[(k + 1) % N] & LOWER);
                let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
                self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random.random()`: 53 random bits in [0, 1).
    pub fn random(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67_108_864.0 + b) / 9_007_199_254_740_992.0
    }

    /// `random.getrandbits(k)` for 1 ≤ k ≤ 32.
    fn getrandbits(&mut self, k: u32) -> u32 {
        self.next_u32() >> (32 - k)
    }

    /// `random._randbelow(n)` for n ≥ 1: rejection sampling on `n.bit_length()` bits.
    pub fn randbelow(&mut self, n: u32) -> u32 {
        let k = u32::BITS - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.randint(a, b)`, both ends included.
    pub fn randint(&mut self, a: u32, b: u32) -> u32 {
        a + self.randbelow(b - a + 1)
    }

    /// `random.shuffle(xs)`.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.randbelow(i as u32 + 1) as usize;
            xs.swap(i, j);
        }
    }

    /// `random.normalvariate(mu, sigma)` (Kinderman and Monahan's ratio method).
    pub fn normalvariate(&mut self, mu: f64, sigma: f64) -> f64 {
        let magic = 4.0 * (-0.5f64).exp() / 2.0f64.sqrt();
        loop {
            let u1 = self.random();
            let u2 = 1.0 - self.random();
            let z = magic * (u1 - 0.5) / u2;
            if z * z / 4.0 <= -u2.ln() {
                return mu + z * sigma;
            }
        }
    }

    /// A Poisson draw of mean `lambda` (Knuth's product of uniforms). TrEnv draws these with
    /// numpy's generator, which is not reproduced: only the distribution is the same.
    pub fn poisson(&mut self, lambda: f64) -> u32 {
        let limit = (-lambda).exp();
        let (mut k, mut p) = (0u32, 1.0f64);
        loop {
            p *= self.random();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values printed by CPython 3.11:
    //   random.seed(2022310806); [random.getrandbits(32) for _ in range(3)]
    //   random.seed(2022310806); random.random(), random.normalvariate(15, 2)
    //   x = list(range(11)); random.shuffle(x); x, random.randint(0, 37)
    #[test]
    fn the_generator_matches_cpython() {
        let mut r = PyRandom::new(2_022_310_806);
        let words: Vec<u32> = (0..3).map(|_| r.next_u32()).collect();
        assert_eq!(words, [236_976_116, 3_750_314_782, 1_574_396_906]);
        let mut r = PyRandom::new(2_022_310_806);
        assert_eq!(r.random(), 0.055_175_303_468_020_24);
        assert_eq!(r.normalvariate(15.0, 2.0), 14.508_175_783_792_108);
        let mut x: Vec<u32> = (0..11).collect();
        r.shuffle(&mut x);
        assert_eq!(x, [6, 0, 4, 5, 9, 7, 3, 10, 1, 2, 8]);
        assert_eq!(r.randint(0, 37), 30);
    }

    #[test]
    fn poisson_draws_have_their_mean() {
        let mut r = PyRandom::new(7);
        let n = 20_000;
        let sum: u32 = (0..n).map(|_| r.poisson(0.1)).sum();
        let mean = f64::from(sum) / f64::from(n);
        assert!((mean - 0.1).abs() < 0.01, "{mean}");
    }
}
