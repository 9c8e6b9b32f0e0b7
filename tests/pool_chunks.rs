//! Chunked maps of plain data (issue 17 §2): inputs and results whose types are only
//! fixed-width numbers travel as their bytes (src/pool/chunk.rs). The results must equal the
//! sequential ones for plain and other types, at every chunk shape (empty, one input, chunks of
//! one, an uneven last chunk, the default), through `map`, `map_results`, `starmap`, `imap`,
//! `map_with` and `apply`, under both start methods; a panic in the middle of a plain chunk
//! fails that input only.

#[macro_use]
mod common;

use std::time::Duration;

use multiproc::{Error, Pool, StartMethod};
use serde::{Deserialize, Serialize};

/// How long one pool test may run.
const LIMIT: Duration = Duration::from_secs(120);

/// Pool tests run one at a time, each bounded (see `common::bounded_fork_lock`).
fn lock() -> impl Sized {
    common::bounded_fork_lock(LIMIT)
}

const METHODS: [StartMethod; 2] = [StartMethod::Fork, StartMethod::ForkServer];

fn pool(m: StartMethod) -> Pool {
    Pool::builder()
        .start_method(m)
        .processes(2)
        .build()
        .unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Particle {
    pos: [f64; 3],
    id: u32,
    alive: bool,
}

fn step(p: Particle) -> Particle {
    Particle {
        pos: p.pos.map(|x| x + 0.5),
        id: p.id,
        alive: p.id % 3 != 0,
    }
}

fn sq(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn halve(x: f64) -> f64 {
    x / 2.0
}

fn label(x: u64) -> String {
    format!("#{x}")
}

fn text_len(s: String) -> u32 {
    s.len() as u32
}

fn shout(s: String) -> String {
    s.to_uppercase()
}

fn mix(a: u8, b: f64, c: bool) -> (f64, char) {
    (
        if c { f64::from(a) * b } else { -b },
        char::from(b'a' + a % 26),
    )
}

fn tag(name: String, k: u32) -> Option<u32> {
    (!name.is_empty()).then_some(k)
}

/// The input sizes and chunk sizes of every shape: empty, one input, chunks of one, an uneven
/// last chunk (10 inputs in chunks of 3 and 4), and the pool's default.
const SIZES: [usize; 4] = [0, 1, 10, 1000];
const CHUNKS: [Option<usize>; 4] = [Some(1), Some(3), Some(4), None];

/// `pool.map(f, inputs)` equals the sequential map at every size and chunk size.
fn check_map<F, T, R>(pool: &Pool, f: F, all: &[T])
where
    F: Fn(T) -> R + Copy + Send + 'static,
    T: Serialize + serde::de::DeserializeOwned + Clone,
    R: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    for n in SIZES {
        let inputs = &all[..n.min(all.len())];
        let want: Vec<R> = inputs.iter().cloned().map(f).collect();
        for chunk in CHUNKS {
            let got = match chunk {
                Some(c) => pool.map_chunked(f, inputs.to_vec(), c),
                None => pool.map(f, inputs.to_vec()),
            };
            assert_eq!(got.unwrap(), want, "n {n}, chunksize {chunk:?}");
        }
    }
}

#[test]
fn plain_and_general_maps_equal_sequential() {
    let _g = lock();
    let u64s: Vec<u64> = (0..1000).map(|x| x * 7_919 + (x << 40)).collect();
    let f64s: Vec<f64> = (0..1000).map(|x| x as f64 * 1.1 - 300.0).collect();
    let particles: Vec<Particle> = (0..1000)
        .map(|i| Particle {
            pos: [i as f64, -(i as f64), 0.25],
            id: i,
            alive: true,
        })
        .collect();
    let words: Vec<String> = (0..1000).map(|i| "é".repeat(i % 5)).collect();
    for m in METHODS {
        let pool = pool(m);
        check_map(&pool, sq, &u64s);
        check_map(&pool, halve, &f64s);
        check_map(&pool, step, &particles);
        // Plain inputs with general results, and the other way round; general both ways.
        check_map(&pool, label, &u64s);
        check_map(&pool, text_len, &words);
        check_map(&pool, shout, &words);
        // From an iterator of known length (encoded straight into chunks) and of unknown length.
        let want: Vec<u64> = (0..5000u64).map(sq).collect();
        assert_eq!(pool.map(sq, 0..5000u64).unwrap(), want);
        assert_eq!(
            pool.map(sq, (0..10_000u64).filter(|x| x % 2 == 0)).unwrap(),
            (0..10_000u64)
                .filter(|x| x % 2 == 0)
                .map(sq)
                .collect::<Vec<_>>()
        );
        assert_eq!(pool.apply(step, particles[5]).unwrap(), step(particles[5]));
        let ctx = 3u64;
        assert_eq!(
            pool.map_with(&ctx, |k: &u64, x: u64| x * k, 0..100u64)
                .unwrap(),
            (0..100u64).map(|x| x * 3).collect::<Vec<_>>()
        );
        let lazy: Vec<f64> = pool
            .imap(halve, f64s.clone())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(lazy, f64s.iter().copied().map(halve).collect::<Vec<_>>());
    }
}

#[test]
fn starmap_of_mixed_types_equals_sequential() {
    let _g = lock();
    let plain: Vec<(u8, f64, bool)> = (0..777u32)
        .map(|i| ((i % 251) as u8, f64::from(i) / 7.0, i % 4 != 0))
        .collect();
    let general: Vec<(String, u32)> = (0..777u32)
        .map(|i| ("x".repeat(i as usize % 3), i))
        .collect();
    for m in METHODS {
        let pool = pool(m);
        for n in [0, 1, 10, 777] {
            let want: Vec<(f64, char)> = plain[..n].iter().map(|&(a, b, c)| mix(a, b, c)).collect();
            assert_eq!(pool.starmap(mix, plain[..n].to_vec()).unwrap(), want);
            let want: Vec<Option<u32>> = general[..n]
                .iter()
                .cloned()
                .map(|(s, k)| tag(s, k))
                .collect();
            assert_eq!(pool.starmap(tag, general[..n].to_vec()).unwrap(), want);
        }
    }
}

fn panics_on_multiples_of_17(x: u64) -> u64 {
    if x % 17 == 3 {
        panic!("input {x} is bad");
    }
    x + 1
}

#[test]
fn a_panic_in_the_middle_of_a_plain_chunk_fails_that_input_only() {
    let _g = lock();
    for m in METHODS {
        let pool = pool(m);
        for chunk in [1usize, 50, 1000] {
            pool.set_chunksize(Some(chunk)).unwrap();
            let out = pool
                .map_results(panics_on_multiples_of_17, (0..1000u64).collect::<Vec<_>>())
                .unwrap();
            assert_eq!(out.len(), 1000);
            for (x, r) in out.iter().enumerate() {
                if x % 17 == 3 {
                    let e = r.as_ref().unwrap_err();
                    let p = e.panic().expect("a panic");
                    assert!(p.message.contains(&format!("input {x} is bad")), "{e}");
                } else {
                    assert_eq!(*r.as_ref().unwrap(), x as u64 + 1);
                }
            }
            // `map` gives the first failed input's error.
            match pool.map(panics_on_multiples_of_17, 0..1000u64) {
                Err(Error::TaskPanicked { panic, .. }) => {
                    assert!(panic.message.contains("input 3 is bad"), "{panic:?}")
                }
                other => panic!("{other:?}"),
            }
        }
        pool.set_chunksize(None).unwrap();
    }
}

#[test]
fn a_plain_chunk_over_the_size_limit_is_too_large() {
    let _g = lock();
    let pool = Pool::builder()
        .processes(1)
        .max_message_bytes(1000)
        .build()
        .unwrap();
    // 200 inputs of 8 bytes in one chunk: 1600 bytes, over the 1000 allowed.
    match pool.map_chunked(sq, 0..200u64, 200) {
        Err(Error::TooLarge { size, limit }) => assert_eq!((size, limit), (1600, 1000)),
        other => panic!("{other:?}"),
    }
    // Chunks of 100 fit.
    assert_eq!(
        pool.map_chunked(sq, 0..200u64, 100).unwrap(),
        (0..200u64).map(sq).collect::<Vec<_>>()
    );
}
