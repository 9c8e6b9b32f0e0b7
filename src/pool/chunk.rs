//! What a chunk's bytes are: how the inputs of a task and the outcomes of its reply are encoded.
//!
//! A chunk is the concatenation of its items' encodings, each item self-delimiting, so that the
//! scheduler can cut a task between inputs (a worker died in it) and the journal can hand back a
//! prefix of a task's outcomes (see `journal`): no header, no table. How one item is encoded
//! depends only on its *type*, so the parent and the worker (same binary) agree without saying:
//!
//! | the type | an input | an outcome |
//! |---|---|---|
//! | plain data: only fixed-width numbers (below) | its numbers' little-endian bytes, in order: [`Codec::Fixed`] | `0`, then the input's way |
//! | anything else | postcard | `0`, then postcard |
//! | a failed input (any type) | — | `1`, then the postcard `ItemError` |
//!
//! **Plain data** is decided by [`Codec::of`], which runs the type's `Deserialize` against a
//! probe that answers only fixed-width requests: `bool` (1 byte, 0 or 1), `u8`…`u128`,
//! `i8`…`i128`, `f32`, `f64`, `char` (4 bytes, a scalar value), unit, and tuples, arrays,
//! structs, tuple structs and newtypes of these (at most [`MAX_LEAVES`] numbers, nested at most
//! [`MAX_DEPTH`] deep). A request for anything else (an `Option`, an enum, a sequence, a string,
//! bytes, `deserialize_any`...) makes the type postcard's, as is every type whose `Deserialize`
//! rejects the probe's zeros. So `u64`, `f64`, `(u32, f64)`, `[f32; 3]` and a derived
//! `struct Point { x: f64, y: f64 }` travel as the bytes of their numbers: encoding and decoding a
//! chunk is a loop of fixed-width copies (no varints, no length prefixes, no descriptor frames,
//! which no such value can carry); `String`, `Vec<T>`, `Option<T>`, enums and the shared-memory
//! types (`PodVec`, `SharedArray`: descriptors) keep postcard. postcard writes `f64`s as the same
//! 8 bytes; it writes integers as varints.
//!
//! Decoding is checked: a plain-data item that is cut short, a `bool` other than 0 or 1, a
//! `char` that is no scalar value, or a value whose `Serialize`/`Deserialize` use another number
//! of bytes than its probe (a hand-written impl whose shape depends on the value) is an
//! [`Error::Codec`](crate::Error::Codec), never a panic.

use serde::de::{self, DeserializeOwned, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{self, Serialize};

/// Most numbers a plain-data type may hold (larger types keep postcard: probing them for every
/// chunk would cost more than it saves).
pub(crate) const MAX_LEAVES: usize = 256;
/// Deepest nesting of tuples and structs a plain-data type may have.
pub(crate) const MAX_DEPTH: usize = 16;

/// How the items of one type are encoded in a chunk (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Plain data of this many bytes: its numbers' little-endian bytes.
    Fixed(usize),
    /// postcard.
    Postcard,
}

impl Codec {
    /// The codec of `T`'s items: [`Codec::Fixed`] when `T` is plain data (module docs).
    pub(crate) fn of<T: DeserializeOwned>() -> Codec {
        let mut probe = Probe {
            size: 0,
            leaves: 0,
            depth: 0,
        };
        match T::deserialize(&mut probe) {
            Ok(_) => Codec::Fixed(probe.size),
            Err(_) => Codec::Postcard,
        }
    }

    /// Appends the encoding of `x` to `out` (nothing is appended on error).
    #[inline]
    pub(crate) fn encode<T: Serialize + ?Sized>(
        self,
        x: &T,
        out: &mut Vec<u8>,
    ) -> postcard::Result<()> {
        match self {
            Codec::Fixed(size) => encode_fixed(x, size, out),
            Codec::Postcard => {
                postcard::serialize_with_flavor(x, super::fnref::Append(&mut *out)).map(|_| ())
            }
        }
    }

    /// Decodes one item from the front of `bytes`; returns it and the rest.
    #[inline]
    pub(crate) fn take<T: DeserializeOwned>(self, bytes: &[u8]) -> postcard::Result<(T, &[u8])> {
        match self {
            Codec::Fixed(size) => take_fixed(bytes, size),
            Codec::Postcard => postcard::take_from_bytes::<T>(bytes),
        }
    }

    /// Byte offsets of the ends of each of the `count` items in `bytes`; `None` when `bytes`
    /// does not hold exactly that many.
    pub(crate) fn item_ends<T: DeserializeOwned>(
        self,
        bytes: &[u8],
        count: u32,
    ) -> Option<Vec<usize>> {
        match self {
            Codec::Fixed(size) => (bytes.len() == size.checked_mul(count as usize)?)
                .then(|| (1..=count as usize).map(|k| k * size).collect()),
            Codec::Postcard => {
                let mut rest = bytes;
                let mut ends = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let (_, r) = postcard::take_from_bytes::<T>(rest).ok()?;
                    rest = r;
                    ends.push(bytes.len() - rest.len());
                }
                Some(ends)
            }
        }
    }
}

/// Appends the `size` bytes of the plain-data value `x` to `out`.
#[inline]
fn encode_fixed<T: Serialize + ?Sized>(
    x: &T,
    size: usize,
    out: &mut Vec<u8>,
) -> postcard::Result<()> {
    let start = out.len();
    out.reserve(size);
    let res = x.serialize(&mut FixedSer { out: &mut *out });
    if res.is_err() || out.len() - start != size {
        out.truncate(start);
        return Err(postcard::Error::SerdeSerCustom);
    }
    Ok(())
}

/// Decodes one plain-data value of `size` bytes from the front of `bytes`.
#[inline]
fn take_fixed<T: DeserializeOwned>(bytes: &[u8], size: usize) -> postcard::Result<(T, &[u8])> {
    // Read from the whole rest (each number a constant-size read), then check that the value
    // took exactly its `size` bytes.
    let mut de = FixedDe { bytes };
    let v = T::deserialize(&mut de)?;
    if bytes.len() - de.bytes.len() != size {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok((v, de.bytes))
}

/// The probe of [`Codec::of`]: a deserializer that answers fixed-width requests with zeros and
/// counts their bytes.
struct Probe {
    size: usize,
    leaves: usize,
    depth: usize,
}

impl Probe {
    fn leaf(&mut self, bytes: usize) -> postcard::Result<()> {
        self.leaves += 1;
        self.size += bytes;
        if self.leaves > MAX_LEAVES {
            return Err(postcard::Error::SerdeDeCustom);
        }
        Ok(())
    }

    fn nested<'de, V: Visitor<'de>>(
        &mut self,
        len: usize,
        visitor: V,
    ) -> postcard::Result<V::Value> {
        if self.depth >= MAX_DEPTH || len > MAX_LEAVES {
            return Err(postcard::Error::SerdeDeCustom);
        }
        self.depth += 1;
        let v = visitor.visit_seq(Fields {
            de: &mut *self,
            left: len,
        });
        self.depth -= 1;
        v
    }
}

/// The fields of a tuple or struct, for the probe and for [`FixedDe`].
struct Fields<'a, D> {
    de: &'a mut D,
    left: usize,
}

impl<'de, D> SeqAccess<'de> for Fields<'_, D>
where
    for<'b> &'b mut D: de::Deserializer<'de, Error = postcard::Error>,
{
    type Error = postcard::Error;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> postcard::Result<Option<S::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// Forwards the requests that are not plain data to an error.
macro_rules! not_plain {
    ($($name:ident($($arg:ty),*)),* $(,)?) => {
        $(
            fn $name<V: Visitor<'de>>(self, $(_: $arg,)* _: V) -> postcard::Result<V::Value> {
                Err(postcard::Error::SerdeDeCustom)
            }
        )*
    };
}

/// The requests that are not plain data, for both deserializers.
macro_rules! not_plain_requests {
    () => {
        not_plain!(
            deserialize_any(),
            deserialize_str(),
            deserialize_string(),
            deserialize_bytes(),
            deserialize_byte_buf(),
            deserialize_option(),
            deserialize_seq(),
            deserialize_map(),
            deserialize_identifier(),
            deserialize_ignored_any(),
            deserialize_enum(&'static str, &'static [&'static str]),
        );
    };
}

impl<'de> de::Deserializer<'de> for &mut Probe {
    type Error = postcard::Error;

    not_plain_requests!();

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(1)?;
        v.visit_bool(false)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(1)?;
        v.visit_i8(0)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(2)?;
        v.visit_i16(0)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(4)?;
        v.visit_i32(0)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(8)?;
        v.visit_i64(0)
    }
    fn deserialize_i128<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(16)?;
        v.visit_i128(0)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(1)?;
        v.visit_u8(0)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(2)?;
        v.visit_u16(0)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(4)?;
        v.visit_u32(0)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(8)?;
        v.visit_u64(0)
    }
    fn deserialize_u128<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(16)?;
        v.visit_u128(0)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(4)?;
        v.visit_f32(0.0)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(8)?;
        v.visit_f64(0.0)
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        self.leaf(4)?;
        v.visit_char('\0')
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> postcard::Result<V::Value> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> postcard::Result<V::Value> {
        if self.depth >= MAX_DEPTH {
            return Err(postcard::Error::SerdeDeCustom);
        }
        self.depth += 1;
        let r = v.visit_newtype_struct(&mut *self);
        self.depth -= 1;
        r
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> postcard::Result<V::Value> {
        self.nested(len, v)
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> postcard::Result<V::Value> {
        self.nested(len, v)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> postcard::Result<V::Value> {
        self.nested(fields.len(), v)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Reads a plain-data value from the front of its bytes (see [`take_fixed`]).
struct FixedDe<'a> {
    bytes: &'a [u8],
}

impl FixedDe<'_> {
    #[inline]
    fn take<const N: usize>(&mut self) -> postcard::Result<[u8; N]> {
        let (head, rest) = self
            .bytes
            .split_first_chunk::<N>()
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        self.bytes = rest;
        Ok(*head)
    }
}

/// `deserialize_$ty` reading `$ty::from_le_bytes`.
macro_rules! fixed_number {
    ($($name:ident $visit:ident $ty:ty),* $(,)?) => {
        $(
            #[inline]
            fn $name<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
                v.$visit(<$ty>::from_le_bytes(self.take()?))
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for &mut FixedDe<'_> {
    type Error = postcard::Error;

    not_plain_requests!();

    fixed_number!(
        deserialize_i8 visit_i8 i8,
        deserialize_i16 visit_i16 i16,
        deserialize_i32 visit_i32 i32,
        deserialize_i64 visit_i64 i64,
        deserialize_i128 visit_i128 i128,
        deserialize_u8 visit_u8 u8,
        deserialize_u16 visit_u16 u16,
        deserialize_u32 visit_u32 u32,
        deserialize_u64 visit_u64 u64,
        deserialize_u128 visit_u128 u128,
        deserialize_f32 visit_f32 f32,
        deserialize_f64 visit_f64 f64,
    );

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        match self.take::<1>()? {
            [0] => v.visit_bool(false),
            [1] => v.visit_bool(true),
            _ => Err(postcard::Error::DeserializeBadBool),
        }
    }
    #[inline]
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        let c = char::from_u32(u32::from_le_bytes(self.take()?))
            .ok_or(postcard::Error::DeserializeBadChar)?;
        v.visit_char(c)
    }
    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> postcard::Result<V::Value> {
        v.visit_unit()
    }
    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> postcard::Result<V::Value> {
        v.visit_unit()
    }
    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> postcard::Result<V::Value> {
        v.visit_newtype_struct(self)
    }
    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> postcard::Result<V::Value> {
        v.visit_seq(Fields {
            de: self,
            left: len,
        })
    }
    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> postcard::Result<V::Value> {
        v.visit_seq(Fields {
            de: self,
            left: len,
        })
    }
    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> postcard::Result<V::Value> {
        v.visit_seq(Fields {
            de: self,
            left: fields.len(),
        })
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// Writes a plain-data value as its numbers' little-endian bytes; anything else is an error.
struct FixedSer<'a> {
    out: &'a mut Vec<u8>,
}

/// `serialize_$ty` writing `$ty::to_le_bytes`.
macro_rules! put_number {
    ($($name:ident $ty:ty),* $(,)?) => {
        $(
            #[inline]
            fn $name(self, v: $ty) -> postcard::Result<()> {
                self.out.extend_from_slice(&v.to_le_bytes());
                Ok(())
            }
        )*
    };
}

impl<'a> ser::Serializer for &mut FixedSer<'a> {
    type Ok = ();
    type Error = postcard::Error;
    type SerializeSeq = ser::Impossible<(), postcard::Error>;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = ser::Impossible<(), postcard::Error>;
    type SerializeMap = ser::Impossible<(), postcard::Error>;
    type SerializeStruct = Self;
    type SerializeStructVariant = ser::Impossible<(), postcard::Error>;

    put_number!(
        serialize_i8 i8,
        serialize_i16 i16,
        serialize_i32 i32,
        serialize_i64 i64,
        serialize_i128 i128,
        serialize_u8 u8,
        serialize_u16 u16,
        serialize_u32 u32,
        serialize_u64 u64,
        serialize_u128 u128,
        serialize_f32 f32,
        serialize_f64 f64,
    );

    #[inline]
    fn serialize_bool(self, v: bool) -> postcard::Result<()> {
        self.out.push(u8::from(v));
        Ok(())
    }
    #[inline]
    fn serialize_char(self, v: char) -> postcard::Result<()> {
        self.out.extend_from_slice(&u32::from(v).to_le_bytes());
        Ok(())
    }
    fn serialize_str(self, _: &str) -> postcard::Result<()> {
        Err(postcard::Error::SerdeSerCustom)
    }
    fn serialize_bytes(self, _: &[u8]) -> postcard::Result<()> {
        Err(postcard::Error::SerdeSerCustom)
    }
    fn serialize_none(self) -> postcard::Result<()> {
        Err(postcard::Error::SerdeSerCustom)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> postcard::Result<()> {
        Err(postcard::Error::SerdeSerCustom)
    }
    #[inline]
    fn serialize_unit(self) -> postcard::Result<()> {
        Ok(())
    }
    #[inline]
    fn serialize_unit_struct(self, _: &'static str) -> postcard::Result<()> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> postcard::Result<()> {
        Err(postcard::Error::SerdeSerCustom)
    }
    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &T,
    ) -> postcard::Result<()> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> postcard::Result<()> {
        Err(postcard::Error::SerdeSerCustom)
    }
    fn serialize_seq(self, _: Option<usize>) -> postcard::Result<Self::SerializeSeq> {
        Err(postcard::Error::SerdeSerCustom)
    }
    #[inline]
    fn serialize_tuple(self, _: usize) -> postcard::Result<Self> {
        Ok(self)
    }
    #[inline]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> postcard::Result<Self> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> postcard::Result<Self::SerializeTupleVariant> {
        Err(postcard::Error::SerdeSerCustom)
    }
    fn serialize_map(self, _: Option<usize>) -> postcard::Result<Self::SerializeMap> {
        Err(postcard::Error::SerdeSerCustom)
    }
    #[inline]
    fn serialize_struct(self, _: &'static str, _: usize) -> postcard::Result<Self> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> postcard::Result<Self::SerializeStructVariant> {
        Err(postcard::Error::SerdeSerCustom)
    }
    fn collect_str<T: std::fmt::Display + ?Sized>(self, _: &T) -> postcard::Result<()> {
        Err(postcard::Error::SerdeSerCustom)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

impl ser::SerializeTuple for &mut FixedSer<'_> {
    type Ok = ();
    type Error = postcard::Error;
    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> postcard::Result<()> {
        v.serialize(&mut **self)
    }
    #[inline]
    fn end(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut FixedSer<'_> {
    type Ok = ();
    type Error = postcard::Error;
    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> postcard::Result<()> {
        v.serialize(&mut **self)
    }
    #[inline]
    fn end(self) -> postcard::Result<()> {
        Ok(())
    }
}

impl ser::SerializeStruct for &mut FixedSer<'_> {
    type Ok = ();
    type Error = postcard::Error;
    #[inline]
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        _: &'static str,
        v: &T,
    ) -> postcard::Result<()> {
        v.serialize(&mut **self)
    }
    #[inline]
    fn end(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
