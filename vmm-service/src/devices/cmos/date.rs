//! Calendar arithmetic for the RTC: a date and time of the proleptic Gregorian calendar and
//! its count of seconds since 1970-01-01 00:00:00 (negative before), both ways.

/// Seconds in a day.
pub const DAY: i64 = 86_400;

/// A date and time, in binary. Built by the RTC from its registers, so any field may be out
/// of range; [`DateTime::to_secs`] checks them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    /// The full year (the RTC holds 0..=9999: century and year registers).
    pub year: u16,
    /// 1..=12.
    pub month: u8,
    /// 1..=days in the month.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

/// Whether `year` is a leap year.
pub fn leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1..=12) of `year`.
pub fn month_days(year: i64, month: u8) -> u8 {
    match month {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a count of days from 1970-01-01 (`civil_from_days`): year, month, day.
fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u8, d as u8)
}

/// The day of the week of a count of seconds: 0 = Sunday.
pub fn weekday(secs: i64) -> u8 {
    // 1970-01-01 was a Thursday.
    (secs.div_euclid(DAY) + 4).rem_euclid(7) as u8
}

impl DateTime {
    pub const fn new(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Self {
        DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }
    }

    /// Seconds since 1970-01-01 00:00:00, or `None` when a field is out of range (year above
    /// 9999, month 0 or above 12, a day the month does not have, hour above 23, minute or
    /// second above 59).
    pub fn to_secs(&self) -> Option<i64> {
        let y = i64::from(self.year);
        let ok = self.year <= 9999
            && (1..=12).contains(&self.month)
            && (1..=month_days(y, self.month)).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second < 60;
        ok.then(|| {
            let days = days_from_civil(y, i64::from(self.month), i64::from(self.day));
            days * DAY
                + i64::from(self.hour) * 3600
                + i64::from(self.minute) * 60
                + i64::from(self.second)
        })
    }

    /// The date and time of `secs` since 1970-01-01 00:00:00, for years 0..=9999 (later
    /// counts wrap to year 0: the RTC's century register has two digits).
    pub fn from_secs(secs: i64) -> DateTime {
        let (y, month, day) = civil_from_days(secs.div_euclid(DAY));
        let sod = secs.rem_euclid(DAY);
        DateTime {
            year: y.rem_euclid(10_000) as u16,
            month,
            day,
            hour: (sod / 3600) as u8,
            minute: (sod / 60 % 60) as u8,
            second: (sod % 60) as u8,
        }
    }
}
