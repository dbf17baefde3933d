//! Helpers shared by the fuzz targets in `fuzz_targets/`.

use tidemark_core::wire::ValueKind;

/// Type OIDs with their array element OID (0 for a scalar), one for every
/// [`ValueKind`] the codec has, and an array of each.
const TYPES: &[(u32, u32)] = &[
    (16, 0),      // bool
    (20, 0),      // int8
    (701, 0),     // float8
    (1700, 0),    // numeric
    (790, 0),     // money
    (22, 0),      // int2vector
    (3802, 0),    // jsonb
    (17, 0),      // bytea
    (1184, 0),    // timestamptz
    (25, 0),      // text
    (1000, 16),   // bool[]
    (1016, 20),   // int8[]
    (1022, 701),  // float8[]
    (1231, 1700), // numeric[]
    (791, 790),   // money[]
    (1006, 22),   // int2vector[]
    (3807, 3802), // jsonb[]
    (1001, 17),   // bytea[]
    (1185, 1184), // timestamptz[]
    (1009, 25),   // text[]
    (1020, 603),  // box[], the one array delimited by ';'
];

/// Every value kind the codec distinguishes, scalars and arrays.
pub fn kinds() -> Vec<ValueKind> {
    TYPES
        .iter()
        .map(|&(oid, elem)| ValueKind::from_type(oid, elem))
        .collect()
}
