//! Unit tests of the chunk formats.

use serde::{Deserialize, Serialize};

use super::*;
use crate::shm::PodVec;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Point {
    x: f64,
    y: i32,
    on: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Meters(f32);

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
enum Side {
    Left,
    Right,
}

/// A type of unbounded depth (through `Box`): the probe stops, it does not recurse forever.
#[derive(Debug, Serialize, Deserialize)]
struct Chain(u8, Box<Chain>);

#[test]
fn plain_data_is_fixed_and_the_rest_is_postcard() {
    assert_eq!(Codec::of::<u64>(), Codec::Fixed(8));
    assert_eq!(Codec::of::<f64>(), Codec::Fixed(8));
    assert_eq!(Codec::of::<bool>(), Codec::Fixed(1));
    assert_eq!(Codec::of::<char>(), Codec::Fixed(4));
    assert_eq!(Codec::of::<()>(), Codec::Fixed(0));
    assert_eq!(Codec::of::<i128>(), Codec::Fixed(16));
    assert_eq!(Codec::of::<(u32, f64)>(), Codec::Fixed(12));
    assert_eq!(Codec::of::<[f32; 3]>(), Codec::Fixed(12));
    assert_eq!(Codec::of::<Point>(), Codec::Fixed(13));
    assert_eq!(Codec::of::<Meters>(), Codec::Fixed(4));
    assert_eq!(Codec::of::<([u8; 2], (Meters, u16))>(), Codec::Fixed(8));
    assert_eq!(Codec::of::<std::time::Duration>(), Codec::Fixed(12));
    for general in [
        Codec::of::<String>(),
        Codec::of::<Vec<u64>>(),
        Codec::of::<Option<u32>>(),
        Codec::of::<Side>(),
        Codec::of::<(u32, String)>(),
        Codec::of::<PodVec<f64>>(),
        Codec::of::<std::num::NonZeroU32>(),
        Codec::of::<Chain>(),
        Codec::of::<[[[u64; 32]; 32]; 2]>(),
    ] {
        assert_eq!(general, Codec::Postcard);
    }
}

fn round_trip<T>(values: &[T])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let codec = Codec::of::<T>();
    let Codec::Fixed(size) = codec else {
        panic!("{} is not plain data", std::any::type_name::<T>())
    };
    let mut bytes = Vec::new();
    for v in values {
        codec.encode(v, &mut bytes).unwrap();
    }
    assert_eq!(bytes.len(), size * values.len());
    let ends = codec.item_ends::<T>(&bytes, values.len() as u32).unwrap();
    assert_eq!(
        ends,
        (1..=values.len()).map(|k| k * size).collect::<Vec<_>>()
    );
    let mut rest = &bytes[..];
    for v in values {
        let (got, r) = codec.take::<T>(rest).unwrap();
        assert_eq!(&got, v);
        rest = r;
    }
    assert!(rest.is_empty());
}

#[test]
fn plain_values_round_trip_as_their_bytes() {
    round_trip(&[0u64, 1, u64::MAX, 1 << 40]);
    round_trip(&[0.0f64, -1.5, f64::MAX, f64::MIN_POSITIVE, f64::INFINITY]);
    round_trip(&[i8::MIN, -1, 0, i8::MAX]);
    round_trip(&[true, false]);
    round_trip(&['a', 'é', '\u{10ffff}']);
    round_trip(&[(7u32, 2.5f64), (u32::MAX, -0.0)]);
    round_trip(&[[1.0f32, 2.0, 3.0]]);
    round_trip(&[
        Point {
            x: 1.25,
            y: -3,
            on: true,
        },
        Point {
            x: 0.0,
            y: i32::MAX,
            on: false,
        },
    ]);
    round_trip(&[Meters(1.5)]);
    round_trip(&[(), ()]);
    // The bytes are the numbers' little-endian bytes, in order.
    let mut b = Vec::new();
    Codec::of::<(u16, u32)>()
        .encode(&(0x0102u16, 0x0304_0506u32), &mut b)
        .unwrap();
    assert_eq!(b, [0x02, 0x01, 0x06, 0x05, 0x04, 0x03]);
    // NaN keeps its bits.
    let mut b = Vec::new();
    Codec::of::<f64>().encode(&f64::NAN, &mut b).unwrap();
    let (nan, _) = Codec::of::<f64>().take::<f64>(&b).unwrap();
    assert_eq!(nan.to_bits(), f64::NAN.to_bits());
}

#[test]
fn malformed_plain_items_are_errors() {
    let u64s = Codec::of::<u64>();
    assert!(u64s.take::<u64>(&[1, 2, 3]).is_err());
    assert!(u64s.take::<u64>(&[]).is_err());
    assert_eq!(u64s.item_ends::<u64>(&[0; 15], 2), None);
    assert_eq!(u64s.item_ends::<u64>(&[0; 16], 3), None);
    assert!(Codec::of::<bool>().take::<bool>(&[2]).is_err());
    let surrogate = 0xD800u32.to_le_bytes();
    assert!(Codec::of::<char>().take::<char>(&surrogate).is_err());
    let too_big = 0x11_0000u32.to_le_bytes();
    assert!(Codec::of::<char>().take::<char>(&too_big).is_err());
    // A value whose Serialize writes another shape than its probe: refused, nothing
    // appended.
    let mut b = vec![9];
    assert!(Codec::Fixed(8).encode(&"text", &mut b).is_err());
    assert!(Codec::Fixed(8).encode(&7u32, &mut b).is_err());
    assert_eq!(b, [9]);
    // And one whose Deserialize reads fewer bytes than the item holds.
    assert!(Codec::Fixed(8).take::<u32>(&[0; 8]).is_err());
}

#[test]
fn postcard_items_keep_postcard() {
    let c = Codec::of::<String>();
    let mut b = Vec::new();
    c.encode(&"héllo".to_string(), &mut b).unwrap();
    assert_eq!(b, postcard::to_stdvec("héllo").unwrap());
    assert_eq!(c.take::<String>(&b).unwrap().0, "héllo");
    assert_eq!(c.item_ends::<String>(&b, 1), Some(vec![b.len()]));
    assert_eq!(c.item_ends::<String>(&b, 2), None);
}
