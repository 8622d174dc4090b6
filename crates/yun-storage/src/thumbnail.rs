//! Image processing on download URLs, the subset of COS's `imageMogr2` that thumbnails
//! need: `…?sign=…&t=…&imageMogr2/thumbnail/200x200/crop/200x200/gravity/center/format/webp`.
//!
//! - `thumbnail/!<P>p` scales both sides to P percent; `<W>x` and `x<H>` fix one side and
//!   keep the ratio; `<W>x<H>` fits inside the box; `!<W>x<H>r` covers it; `<W>x<H>!` is
//!   exactly that size. A trailing `>` on the first three forms only ever shrinks.
//! - `crop/<W>x<H>` (or `<W>x`, `x<H>`) cuts from the `gravity/<g>` point (`northwest`,
//!   the default, … `center` … `southeast`).
//! - `format/jpg|png|webp` (default: the source's, with GIF rendered as PNG) and
//!   `quality/<1-100>` for JPEG.
//! - `auto-orient` and `strip` are accepted and always in effect: EXIF orientation is
//!   applied and the output carries no metadata.
//!
//! The bounds are COS's: sources up to 32 MiB and 100 megapixels, results up to 9999 px a
//! side and 25 megapixels.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use sha2::{Digest, Sha256};
use yun_types::{ErrorCode, YunError};

pub const MAX_SOURCE_BYTES: u64 = 32 << 20;
const MAX_SOURCE_PIXELS: u64 = 100_000_000;
const MAX_SIDE: u32 = 9999;
const MAX_OUTPUT_PIXELS: u64 = 25_000_000;
const DEFAULT_JPEG_QUALITY: u8 = 85;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Thumbnail {
    Percent(u32),
    Fit {
        width: Option<u32>,
        height: Option<u32>,
        shrink_only: bool,
    },
    Cover {
        width: u32,
        height: u32,
    },
    Exact {
        width: u32,
        height: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Gravity {
    #[default]
    NorthWest,
    North,
    NorthEast,
    West,
    Center,
    East,
    SouthWest,
    South,
    SouthEast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Jpeg,
    Png,
    Webp,
}

impl OutputFormat {
    pub fn mime_type(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::Webp => "image/webp",
        }
    }
}

/// A parsed `imageMogr2/…` spec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageOps {
    thumbnail: Option<Thumbnail>,
    crop: Option<(Option<u32>, Option<u32>)>,
    gravity: Gravity,
    format: Option<OutputFormat>,
    quality: Option<u8>,
}

fn bad(message: impl Into<String>) -> YunError {
    YunError::invalid_param(message)
}

fn not_an_image(message: impl std::fmt::Display) -> YunError {
    YunError::new(
        ErrorCode::UnsupportedImage,
        format!("the file is not an image Yun can process (JPEG, PNG, GIF, WebP): {message}"),
    )
}

fn side(text: &str, spec: &str) -> Result<u32, YunError> {
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_SIDE).contains(&n) => Ok(n),
        _ => Err(bad(format!(
            "{spec:?}: sizes are whole numbers of pixels from 1 to {MAX_SIDE}"
        ))),
    }
}

/// `<W>x<H>`, `<W>x` or `x<H>`.
fn geometry(text: &str, spec: &str) -> Result<(Option<u32>, Option<u32>), YunError> {
    let (w, h) = text
        .split_once('x')
        .ok_or_else(|| bad(format!("{spec:?}: expected <width>x<height>")))?;
    let opt = |s: &str| (!s.is_empty()).then(|| side(s, spec)).transpose();
    match (opt(w)?, opt(h)?) {
        (None, None) => Err(bad(format!("{spec:?}: give a width, a height or both"))),
        pair => Ok(pair),
    }
}

fn thumbnail(arg: &str) -> Result<Thumbnail, YunError> {
    let spec = format!("thumbnail/{arg}");
    if let Some(p) = arg.strip_prefix('!').and_then(|a| a.strip_suffix('p')) {
        return match p.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(Thumbnail::Percent(n)),
            _ => Err(bad(format!("{spec:?}: the percentage is 1 to 1000"))),
        };
    }
    if let Some(box_) = arg.strip_prefix('!').and_then(|a| a.strip_suffix('r')) {
        return match geometry(box_, &spec)? {
            (Some(width), Some(height)) => Ok(Thumbnail::Cover { width, height }),
            _ => Err(bad(format!("{spec:?}: !<W>x<H>r needs both sides"))),
        };
    }
    if let Some(box_) = arg.strip_suffix('!') {
        return match geometry(box_, &spec)? {
            (Some(width), Some(height)) => Ok(Thumbnail::Exact { width, height }),
            _ => Err(bad(format!("{spec:?}: <W>x<H>! needs both sides"))),
        };
    }
    let (box_, shrink_only) = match arg.strip_suffix('>') {
        Some(b) => (b, true),
        None => (arg, false),
    };
    let (width, height) = geometry(box_, &spec)?;
    Ok(Thumbnail::Fit {
        width,
        height,
        shrink_only,
    })
}

impl ImageOps {
    /// Parses what follows `imageMogr2/`.
    pub fn parse(spec: &str) -> Result<Self, YunError> {
        let mut ops = Self::default();
        let mut words = spec.split('/').filter(|w| !w.is_empty()).peekable();
        if words.peek().is_none() {
            return Err(bad("imageMogr2 needs an operation, e.g. thumbnail/200x200"));
        }
        while let Some(op) = words.next() {
            if matches!(op, "auto-orient" | "strip") {
                continue;
            }
            let arg = words
                .next()
                .ok_or_else(|| bad(format!("imageMogr2/{op} needs a value")))?;
            match op {
                "thumbnail" => ops.thumbnail = Some(thumbnail(arg)?),
                "crop" => ops.crop = Some(geometry(arg, &format!("crop/{arg}"))?),
                "gravity" => {
                    ops.gravity = match arg.to_ascii_lowercase().as_str() {
                        "northwest" => Gravity::NorthWest,
                        "north" => Gravity::North,
                        "northeast" => Gravity::NorthEast,
                        "west" => Gravity::West,
                        "center" => Gravity::Center,
                        "east" => Gravity::East,
                        "southwest" => Gravity::SouthWest,
                        "south" => Gravity::South,
                        "southeast" => Gravity::SouthEast,
                        _ => return Err(bad(format!("unknown gravity {arg:?}"))),
                    }
                }
                "format" => {
                    ops.format = Some(match arg.to_ascii_lowercase().as_str() {
                        "jpg" | "jpeg" => OutputFormat::Jpeg,
                        "png" => OutputFormat::Png,
                        "webp" => OutputFormat::Webp,
                        _ => return Err(bad(format!("format {arg:?}: Yun writes jpg, png or webp"))),
                    })
                }
                "quality" => {
                    ops.quality = Some(match arg.trim_end_matches('!').parse::<u8>() {
                        Ok(q) if (1..=100).contains(&q) => q,
                        _ => return Err(bad(format!("quality {arg:?}: 1 to 100"))),
                    })
                }
                _ => {
                    return Err(bad(format!(
                        "imageMogr2/{op} is not supported; Yun supports thumbnail, crop, gravity, format, quality, auto-orient and strip"
                    )))
                }
            }
        }
        Ok(ops)
    }

    /// Names this rendering among a file's renderings: the cache key and the ETag suffix.
    pub fn key(&self) -> String {
        hex::encode(&Sha256::digest(format!("{self:?}").as_bytes())[..8])
    }

    /// What the result will be, from the source's content type, without decoding it.
    pub fn output_format(&self, source_type: &str) -> Result<OutputFormat, YunError> {
        let source = default_output(source_type)
            .ok_or_else(|| not_an_image(format!("it is {source_type}")))?;
        Ok(self.format.unwrap_or(source))
    }

    /// The size the thumbnail step produces from a `width`×`height` image.
    fn scaled(&self, width: u32, height: u32) -> (u32, u32) {
        let (w, h) = (f64::from(width), f64::from(height));
        let by = |factor: f64| {
            (
                ((w * factor).round() as u32).max(1),
                ((h * factor).round() as u32).max(1),
            )
        };
        match self.thumbnail {
            None => (width, height),
            Some(Thumbnail::Percent(p)) => by(f64::from(p) / 100.0),
            Some(Thumbnail::Exact { width, height }) => (width, height),
            Some(Thumbnail::Cover {
                width: bw,
                height: bh,
            }) => by((f64::from(bw) / w).max(f64::from(bh) / h)),
            Some(Thumbnail::Fit {
                width: bw,
                height: bh,
                shrink_only,
            }) => {
                let factor = match (bw, bh) {
                    (Some(bw), Some(bh)) => (f64::from(bw) / w).min(f64::from(bh) / h),
                    (Some(bw), None) => f64::from(bw) / w,
                    (None, Some(bh)) => f64::from(bh) / h,
                    (None, None) => 1.0,
                };
                if shrink_only && factor >= 1.0 {
                    (width, height)
                } else {
                    by(factor)
                }
            }
        }
    }

    /// Decodes `source`, applies the operations and encodes the result.
    pub fn render(&self, source: &[u8], output: OutputFormat) -> Result<Vec<u8>, YunError> {
        let mut reader = ImageReader::new(Cursor::new(source))
            .with_guessed_format()
            .map_err(not_an_image)?;
        if !matches!(
            reader.format(),
            Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Gif | ImageFormat::WebP)
        ) {
            return Err(not_an_image("unrecognised bytes"));
        }
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(MAX_SOURCE_PIXELS * 4 + (64 << 20));
        reader.limits(limits);
        let mut decoder = reader.into_decoder().map_err(not_an_image)?;
        let (width, height) = decoder.dimensions();
        if u64::from(width) * u64::from(height) > MAX_SOURCE_PIXELS {
            return Err(bad(format!(
                "the image is {width}x{height}; Yun processes images up to {} megapixels",
                MAX_SOURCE_PIXELS / 1_000_000
            )));
        }
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        let mut img = DynamicImage::from_decoder(decoder).map_err(not_an_image)?;
        img.apply_orientation(orientation);

        let (tw, th) = self.scaled(img.width(), img.height());
        if tw > MAX_SIDE || th > MAX_SIDE || u64::from(tw) * u64::from(th) > MAX_OUTPUT_PIXELS {
            return Err(bad(format!(
                "the result would be {tw}x{th}; at most {MAX_SIDE} px a side and {} megapixels",
                MAX_OUTPUT_PIXELS / 1_000_000
            )));
        }
        if (tw, th) != (img.width(), img.height()) {
            img = if tw <= img.width() && th <= img.height() {
                // Area averaging: fast, and exact for the large reductions thumbnails are.
                img.thumbnail_exact(tw, th)
            } else {
                img.resize_exact(tw, th, image::imageops::FilterType::Triangle)
            };
        }
        if let Some((cw, ch)) = self.crop {
            let (w, h) = (img.width(), img.height());
            let (cw, ch) = (cw.unwrap_or(w).min(w), ch.unwrap_or(h).min(h));
            let (x, y) = self.gravity.origin(w - cw, h - ch);
            img = img.crop_imm(x, y, cw, ch);
        }

        let mut out = Cursor::new(Vec::new());
        let encoded = match output {
            OutputFormat::Jpeg => DynamicImage::ImageRgb8(img.to_rgb8()).write_with_encoder(
                image::codecs::jpeg::JpegEncoder::new_with_quality(
                    &mut out,
                    self.quality.unwrap_or(DEFAULT_JPEG_QUALITY),
                ),
            ),
            OutputFormat::Png => {
                img.write_with_encoder(image::codecs::png::PngEncoder::new(&mut out))
            }
            OutputFormat::Webp => DynamicImage::ImageRgba8(img.to_rgba8())
                .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut out)),
        };
        encoded.map_err(|e| YunError::internal(format!("encoding the image: {e}")))?;
        Ok(out.into_inner())
    }
}

/// The format a source of this content type renders to by default; None when files of
/// this type are never rendered.
fn default_output(source_type: &str) -> Option<OutputFormat> {
    match ImageFormat::from_mime_type(source_type)? {
        ImageFormat::Jpeg => Some(OutputFormat::Jpeg),
        ImageFormat::Png | ImageFormat::Gif => Some(OutputFormat::Png),
        ImageFormat::WebP => Some(OutputFormat::Webp),
        _ => None,
    }
}

/// Whether files of this content type can have renderings.
pub fn renderable(content_type: &str) -> bool {
    default_output(content_type).is_some()
}

impl Gravity {
    /// Where a crop starts, given the slack on each axis.
    fn origin(self, slack_x: u32, slack_y: u32) -> (u32, u32) {
        let x = match self {
            Self::NorthWest | Self::West | Self::SouthWest => 0,
            Self::North | Self::Center | Self::South => slack_x / 2,
            Self::NorthEast | Self::East | Self::SouthEast => slack_x,
        };
        let y = match self {
            Self::NorthWest | Self::North | Self::NorthEast => 0,
            Self::West | Self::Center | Self::East => slack_y / 2,
            Self::SouthWest | Self::South | Self::SouthEast => slack_y,
        };
        (x, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(spec: &str, w: u32, h: u32) -> (u32, u32) {
        ImageOps::parse(spec).unwrap().scaled(w, h)
    }

    #[test]
    fn thumbnail_geometry_follows_cos() {
        assert_eq!(size("thumbnail/!50p", 400, 300), (200, 150));
        assert_eq!(size("thumbnail/100x", 400, 300), (100, 75));
        assert_eq!(size("thumbnail/x150", 400, 300), (200, 150));
        assert_eq!(size("thumbnail/100x100", 400, 300), (100, 75));
        assert_eq!(size("thumbnail/!100x100r", 400, 300), (133, 100));
        assert_eq!(size("thumbnail/50x60!", 400, 300), (50, 60));
        assert_eq!(size("thumbnail/800x800>", 400, 300), (400, 300));
        assert_eq!(size("thumbnail/800x800", 400, 300), (800, 600));
        assert_eq!(size("auto-orient/strip/format/png", 400, 300), (400, 300));
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        for spec in [
            "",
            "thumbnail",
            "thumbnail/x",
            "thumbnail/0x10",
            "thumbnail/10000x",
            "thumbnail/!0p",
            "thumbnail/!10x",
            "thumbnail/abc",
            "crop/10",
            "gravity/up",
            "format/bmp",
            "quality/0",
            "rotate/90",
        ] {
            let err = ImageOps::parse(spec).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidParam, "{spec}");
        }
    }

    fn picture(width: u32, height: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        });
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn dimensions(bytes: &[u8]) -> (ImageFormat, u32, u32) {
        let img = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .unwrap();
        let format = img.format().unwrap();
        let decoded = img.decode().unwrap();
        (format, decoded.width(), decoded.height())
    }

    #[test]
    fn renders_scale_crop_and_convert() {
        let source = picture(64, 48);
        let ops = ImageOps::parse("thumbnail/!32x32r/crop/32x32/gravity/center").unwrap();
        let out = ops.render(&source, OutputFormat::Png).unwrap();
        assert_eq!(dimensions(&out), (ImageFormat::Png, 32, 32));
        let ops = ImageOps::parse("thumbnail/20x/format/jpg/quality/70").unwrap();
        let format = ops.output_format("image/png").unwrap();
        let out = ops.render(&source, format).unwrap();
        assert_eq!(dimensions(&out), (ImageFormat::Jpeg, 20, 15));
        let ops = ImageOps::parse("thumbnail/128x128").unwrap();
        let out = ops.render(&source, OutputFormat::Webp).unwrap();
        assert_eq!(dimensions(&out), (ImageFormat::WebP, 128, 96));
    }

    #[test]
    fn non_images_and_huge_results_are_refused() {
        let ops = ImageOps::parse("thumbnail/10x10").unwrap();
        let err = ops.render(b"plain text", OutputFormat::Png).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedImage);
        assert_eq!(
            ops.output_format("text/plain").unwrap_err().code,
            ErrorCode::UnsupportedImage
        );
        let enlarged = ImageOps::parse("thumbnail/!1000p")
            .unwrap()
            .render(&picture(64, 48), OutputFormat::Png)
            .unwrap();
        assert_eq!(dimensions(&enlarged).1, 640);
        let err = ImageOps::parse("thumbnail/!1000p")
            .unwrap()
            .render(&picture(1000, 1000), OutputFormat::Png)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidParam);
    }
}
