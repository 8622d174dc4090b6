//! GeoJSON geometry for `$nearSphere`, `$geoWithin`, `$geoIntersects` and `$geoNear`.
//! Distances are great-circle (haversine, MongoDB's Earth radius) in meters; containment
//! and intersection are computed on longitude/latitude as a plane, which is accurate for
//! the city-scale areas apps query but not for shapes spanning the antimeridian or poles.

use serde_json::Value;
use yun_types::{ErrorCode, YunError};

/// MongoDB's radius for spherical queries, in meters.
pub const EARTH_RADIUS_M: f64 = 6_378_100.0;

type Point = (f64, f64);

#[derive(Debug, Clone, PartialEq)]
pub enum Geometry {
    Point(Point),
    Line(Vec<Point>),
    /// Outer ring first, then holes.
    Polygon(Vec<Vec<Point>>),
    Many(Vec<Geometry>),
}

fn invalid(message: impl Into<String>) -> YunError {
    YunError::new(ErrorCode::DatabaseInvalidOperator, message)
}

fn point(v: &Value) -> Option<Point> {
    let c = v.as_array()?;
    match c.as_slice() {
        [lng, lat] => Some((lng.as_f64()?, lat.as_f64()?)),
        _ => None,
    }
}

fn points(v: &Value) -> Option<Vec<Point>> {
    v.as_array()?.iter().map(point).collect()
}

fn rings(v: &Value) -> Option<Vec<Vec<Point>>> {
    v.as_array()?.iter().map(points).collect()
}

impl Geometry {
    /// A GeoJSON object, or `None` when `v` is not one.
    pub fn from_value(v: &Value) -> Option<Self> {
        let coords = v.get("coordinates")?;
        let many = |f: fn(&Value) -> Option<Geometry>| {
            coords
                .as_array()
                .and_then(|items| items.iter().map(f).collect::<Option<Vec<_>>>())
                .map(Geometry::Many)
        };
        match v.get("type")?.as_str()? {
            "Point" => point(coords).map(Geometry::Point),
            "LineString" => points(coords).map(Geometry::Line),
            "Polygon" => rings(coords).map(Geometry::Polygon),
            "MultiPoint" => many(|c| point(c).map(Geometry::Point)),
            "MultiLineString" => many(|c| points(c).map(Geometry::Line)),
            "MultiPolygon" => many(|c| rings(c).map(Geometry::Polygon)),
            _ => None,
        }
    }

    pub fn parse(v: &Value) -> Result<Self, YunError> {
        Self::from_value(v).ok_or_else(|| invalid("expected a GeoJSON geometry"))
    }

    fn vertices(&self) -> Vec<Point> {
        match self {
            Geometry::Point(p) => vec![*p],
            Geometry::Line(ps) => ps.clone(),
            Geometry::Polygon(rs) => rs.iter().flatten().copied().collect(),
            Geometry::Many(gs) => gs.iter().flat_map(Geometry::vertices).collect(),
        }
    }

    fn segments(&self) -> Vec<(Point, Point)> {
        match self {
            Geometry::Point(_) => Vec::new(),
            Geometry::Line(ps) => ps.windows(2).map(|w| (w[0], w[1])).collect(),
            Geometry::Polygon(rs) => rs
                .iter()
                .flat_map(|r| r.windows(2).map(|w| (w[0], w[1])))
                .collect(),
            Geometry::Many(gs) => gs.iter().flat_map(Geometry::segments).collect(),
        }
    }

    fn contains_point(&self, p: Point) -> bool {
        match self {
            Geometry::Polygon(rs) => {
                rs.first().is_some_and(|outer| in_ring(p, outer))
                    && !rs[1..].iter().any(|hole| in_ring(p, hole))
            }
            Geometry::Many(gs) => gs.iter().any(|g| g.contains_point(p)),
            _ => false,
        }
    }

    /// Whether `self` lies inside the polygon(s) `area`.
    pub fn within(&self, area: &Geometry) -> bool {
        self.vertices().iter().all(|p| area.contains_point(*p))
            && !self
                .segments()
                .iter()
                .any(|s| area.segments().iter().any(|t| crosses(*s, *t)))
    }

    pub fn intersects(&self, other: &Geometry) -> bool {
        self.vertices()
            .iter()
            .any(|p| other.contains_point(*p) || other.vertices().contains(p))
            || other.vertices().iter().any(|p| self.contains_point(*p))
            || self
                .segments()
                .iter()
                .any(|s| other.segments().iter().any(|t| crosses(*s, *t)))
    }

    /// Distance in meters from the nearest vertex to `p`.
    pub fn distance_to(&self, p: Point) -> f64 {
        self.vertices()
            .into_iter()
            .map(|v| haversine(v, p))
            .fold(f64::INFINITY, f64::min)
    }
}

/// Ray casting.
fn in_ring(p: Point, ring: &[Point]) -> bool {
    let mut inside = false;
    for w in ring.windows(2) {
        let ((x1, y1), (x2, y2)) = (w[0], w[1]);
        if (y1 > p.1) != (y2 > p.1) && p.0 < (x2 - x1) * (p.1 - y1) / (y2 - y1) + x1 {
            inside = !inside;
        }
    }
    inside
}

fn orient(a: Point, b: Point, c: Point) -> f64 {
    (b.0 - a.0) * (c.1 - a.1) - (b.1 - a.1) * (c.0 - a.0)
}

/// Proper crossing of two segments (touching endpoints do not count).
fn crosses((a, b): (Point, Point), (c, d): (Point, Point)) -> bool {
    let (o1, o2, o3, o4) = (
        orient(a, b, c),
        orient(a, b, d),
        orient(c, d, a),
        orient(c, d, b),
    );
    o1 * o2 < 0.0 && o3 * o4 < 0.0
}

/// Great-circle distance in meters.
pub fn haversine((lng1, lat1): Point, (lng2, lat2): Point) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lng2 - lng1).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_M * h.sqrt().asin()
}

/// `$nearSphere` / `$geoNear` target: a point and a distance band in meters.
#[derive(Debug, Clone)]
pub struct Near {
    pub point: Point,
    pub min: f64,
    pub max: f64,
}

impl Near {
    /// `{$geometry: Point, $maxDistance, $minDistance}` or a legacy `[lng, lat]`.
    pub fn parse(v: &Value) -> Result<Self, YunError> {
        let (geometry, obj) = match v.get("$geometry") {
            Some(g) => (g, v),
            None => (v, v),
        };
        let point = match Geometry::from_value(geometry) {
            Some(Geometry::Point(p)) => p,
            _ => point(geometry).ok_or_else(|| invalid("$nearSphere needs a GeoJSON Point"))?,
        };
        let bound = |k: &str, default: f64| {
            obj.get(k).map_or(Ok(default), |d| {
                d.as_f64()
                    .filter(|d| *d >= 0.0)
                    .ok_or_else(|| invalid(format!("{k} must be a non-negative number of meters")))
            })
        };
        Ok(Near {
            point,
            min: bound("$minDistance", 0.0)?,
            max: bound("$maxDistance", f64::INFINITY)?,
        })
    }

    /// The distance of `v` (a GeoJSON value) when it lies in the band.
    pub fn distance(&self, v: &Value) -> Option<f64> {
        let d = Geometry::from_value(v)?.distance_to(self.point);
        (d >= self.min && d <= self.max).then_some(d)
    }
}

/// `$geoWithin`'s area: a polygon geometry or a `$centerSphere` circle.
#[derive(Debug, Clone)]
pub enum Area {
    Shape(Geometry),
    Circle { center: Point, radius_m: f64 },
}

impl Area {
    pub fn parse(v: &Value) -> Result<Self, YunError> {
        if let Some(g) = v.get("$geometry") {
            let shape = Geometry::parse(g)?;
            return match shape {
                Geometry::Polygon(_) | Geometry::Many(_) => Ok(Area::Shape(shape)),
                _ => Err(invalid("$geoWithin needs a Polygon or MultiPolygon")),
            };
        }
        if let Some([center, radius]) = v
            .get("$centerSphere")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            let center = match Geometry::from_value(center) {
                Some(Geometry::Point(p)) => Some(p),
                _ => point(center),
            }
            .ok_or_else(|| invalid("$centerSphere needs a center point"))?;
            let radians = radius
                .as_f64()
                .ok_or_else(|| invalid("$centerSphere radius is in radians"))?;
            return Ok(Area::Circle {
                center,
                radius_m: radians * EARTH_RADIUS_M,
            });
        }
        Err(invalid("$geoWithin takes $geometry or $centerSphere"))
    }

    pub fn contains(&self, v: &Value) -> bool {
        let Some(g) = Geometry::from_value(v) else {
            return false;
        };
        match self {
            Area::Shape(shape) => g.within(shape),
            Area::Circle { center, radius_m } => g
                .vertices()
                .iter()
                .all(|p| haversine(*p, *center) <= *radius_m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn distances_containment_and_intersection() {
        // Guangzhou Tower to Canton Fair: about 3.3 km.
        let d = haversine((113.3245, 23.1064), (113.3619, 23.1005));
        assert!((3_000.0..4_000.0).contains(&d), "{d}");
        let square = Geometry::parse(&json!({"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[4, 4], [6, 4], [6, 6], [4, 6], [4, 4]]]})).unwrap();
        assert!(Geometry::Point((1.0, 1.0)).within(&square));
        assert!(
            !Geometry::Point((5.0, 5.0)).within(&square),
            "inside the hole"
        );
        assert!(!Geometry::Point((11.0, 1.0)).within(&square));
        let line =
            Geometry::parse(&json!({"type": "LineString", "coordinates": [[-1, 1], [1, 1]]}))
                .unwrap();
        assert!(line.intersects(&square) && !line.within(&square));
        let near = Near::parse(&json!({"$geometry": {"type": "Point", "coordinates": [113.3245, 23.1064]}, "$maxDistance": 5000, "$minDistance": 1000})).unwrap();
        assert!(near
            .distance(&json!({"type": "Point", "coordinates": [113.3619, 23.1005]}))
            .is_some());
        assert!(
            near.distance(&json!({"type": "Point", "coordinates": [113.3245, 23.1064]}))
                .is_none(),
            "closer than minDistance"
        );
        let circle = Area::parse(&json!({"$centerSphere": [[0, 0], 0.01]})).unwrap();
        assert!(circle.contains(&json!({"type": "Point", "coordinates": [0.1, 0.1]})));
        assert!(!circle.contains(&json!({"type": "Point", "coordinates": [1, 1]})));
        assert!(
            Near::parse(&json!({"$geometry": {"type": "Polygon", "coordinates": []}})).is_err()
        );
    }
}
