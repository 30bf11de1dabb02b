"""Weather and room physics at one-minute resolution.

Rooms follow first-order balances, each relaxing towards a moving target:

* CO2 (ppm), the mass balance `V dC/dt = G n - Q (C - C_out)`;
* absolute humidity (g/m^3), the same balance with moisture from breath, cooking and showers;
* temperature, an RC model `C dT/dt = H (T_out - T) + P` with conductance `H` (fabric plus
  ventilation) and gains `P` from weather-compensated heating, people, appliances and sun.

The recurrences are solved in closed form over chunks (cumulative products in log space), so a
year of minutes costs a few hundred vector operations rather than half a million Python steps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .config import WorldConfig, stream
from .homes import RoomSpec

FloatArray = npt.NDArray[np.float64]

CHUNK_DECAY = 50.0  # max summed rate inside one chunk: keeps exp() far from overflow


def relax(rate: FloatArray, target: FloatArray, first: FloatArray) -> FloatArray:
    """Solve `y[:, m+1] = target[:, m] + (y[:, m] - target[:, m]) * exp(-rate[:, m])`.

    This is the exact one-step solution of `dy/dt = (target - y) / tau` with `rate = dt / tau`
    held over the step, the form of every balance here. With `a = exp(-rate)` and
    `b = (1 - a) target`, inside a chunk `y[k] = P_k (y[0] + sum_{j<k} b[j] / P_{j+1})` where
    `P_k` multiplies the first k factors `a`; chunks end before `P` falls below
    `exp(-CHUNK_DECAY)`, so nothing overflows and no Python loop runs per step.
    """
    rows, n = rate.shape
    y = np.empty((rows, n))
    y[:, 0] = first
    if n == 1:
        return y
    decay = rate[:, : n - 1]
    pushed = -np.expm1(-decay) * target[:, : n - 1]
    worst = np.cumsum(decay.max(axis=0))
    bounds = [0]
    while bounds[-1] < n - 1:
        limit = (worst[bounds[-1] - 1] if bounds[-1] > 0 else 0.0) + CHUNK_DECAY
        nxt = int(np.searchsorted(worst, limit, side="right"))
        bounds.append(min(n - 1, max(nxt, bounds[-1] + 1)))
    for lo, hi in itertools.pairwise(bounds):
        log_p = np.cumsum(decay[:, lo:hi], axis=1)  # -log P_{k+1} for k = 0..len-1
        scaled = np.cumsum(pushed[:, lo:hi] * np.exp(log_p), axis=1)
        y[:, lo + 1 : hi + 1] = np.exp(-log_p) * (y[:, lo : lo + 1] + scaled)
    return y


def saturation_humidity(celsius: FloatArray) -> FloatArray:
    """Water vapour at saturation, g/m^3 (Magnus formula over water)."""
    vapour_hpa = 6.112 * np.exp(17.62 * celsius / (243.12 + celsius))
    return np.asarray(216.7 * vapour_hpa / (273.15 + celsius), dtype=np.float64)


@dataclass(frozen=True)
class Weather:
    """The town's weather per minute (all homes share it)."""

    temperature: FloatArray  # deg C
    daily_temperature: FloatArray  # trailing 24 h mean, deg C (drives the heating curve)
    humidity: FloatArray  # absolute, g/m^3
    irradiance: FloatArray  # global horizontal, W/m^2
    illuminance: FloatArray  # outdoor, lx
    co2: FloatArray  # ppm


def weather(config: WorldConfig, seed: int, minutes: FloatArray) -> Weather:
    """Seasonal and daily cycles, solar geometry, and day-to-day weather from one stream."""
    rng = stream(seed, "weather")
    n_days = config.days + 2
    day0 = math.floor(config.start_epoch / 86400.0)
    hours = (minutes - day0 * 86400.0) / 3600.0

    # Clouds: an hourly AR(1) in logit space, so grey and sunny spells last a while.
    n_hours = n_days * 24
    latent = np.empty(n_hours)
    latent[0] = rng.normal(0.0, 1.5)
    shocks = rng.normal(0.0, 1.5 * math.sqrt(1 - 0.95**2), n_hours)
    for i in range(1, n_hours):
        latent[i] = 0.95 * latent[i - 1] + shocks[i]
    cloud = np.interp(hours, np.arange(n_hours), 1.0 / (1.0 + np.exp(-(latent + 0.3))))

    # Day-to-day temperature anomaly: AR(1) on daily values, linear in between.
    anomaly = np.empty(n_days)
    anomaly[0] = rng.normal(0.0, 3.5)
    daily_shocks = rng.normal(0.0, 3.5 * math.sqrt(1 - 0.75**2), n_days)
    for i in range(1, n_days):
        anomaly[i] = 0.75 * anomaly[i - 1] + daily_shocks[i]
    anomaly_now = np.interp(hours / 24.0, np.arange(n_days) + 0.5, anomaly)

    day_of_year = np.mod(minutes / 86400.0, 365.2425)  # 1970-01-01 began a year; drift < 1 day
    latitude = math.radians(config.latitude)
    season_phase = 0.0 if config.latitude >= 0 else 182.6
    declination = np.radians(23.44) * np.sin(2 * np.pi * (284.0 + day_of_year) / 365.25)
    solar_hours = np.mod(minutes / 3600.0 + config.longitude / 15.0, 24.0)
    hour_angle = np.radians(15.0 * (solar_hours - 12.0))
    sin_elevation = np.sin(latitude) * np.sin(declination) + np.cos(latitude) * np.cos(
        declination
    ) * np.cos(hour_angle)
    clear = 1000.0 * np.clip(sin_elevation, 0.0, None) ** 1.15
    irradiance = clear * (1.0 - 0.75 * cloud**3.4)  # Kasten and Czeplak's cloud factor

    mean = 27.0 - 0.33 * abs(config.latitude)
    amplitude = float(np.clip(0.2 * abs(config.latitude) - 1.0, 1.0, 15.0))
    seasonal = mean - amplitude * np.cos(2 * np.pi * (day_of_year - 20.0 - season_phase) / 365.25)
    diurnal = (2.0 + 3.0 * (1.0 - cloud)) * np.cos(2 * np.pi * (solar_hours - 15.0) / 24.0)
    temperature = seasonal + diurnal + anomaly_now
    afternoon = np.cos(2 * np.pi * (solar_hours - 15.0) / 24.0)
    relative = np.clip(80.0 - 12.0 * afternoon * (1.0 - cloud) + 8.0 * cloud, 35.0, 100.0)
    humidity = saturation_humidity(temperature) * relative / 100.0
    total = np.concatenate([[0.0], np.cumsum(temperature)])
    index = np.arange(1, minutes.size + 1)
    earliest = np.maximum(index - 1440, 0)
    trailing = (total[index] - total[earliest]) / (index - earliest)
    co2 = 420.0 + 15.0 * np.clip(np.cos(2 * np.pi * (solar_hours - 4.0) / 24.0), 0.0, None)
    return Weather(
        temperature=temperature,
        daily_temperature=trailing,
        humidity=humidity,
        irradiance=irradiance,
        illuminance=110.0 * irradiance,  # ~110 lm/W for daylight
        co2=co2,
    )


# ----------------------------------------------------------------------------- rooms

FAN_ACH = 6.0
HOOD_ACH = 4.0
AIRING_ACH = 8.0
HEATING_SEASON_BELOW = 15.0  # deg C, trailing daily mean outdoors
VALVE_GAIN = 3.0  # thermostatic valve: W per K below the setpoint, per W/K of heat loss
VALVE_ITERATIONS = 8
THERMAL_STEP = 5  # minutes per step of the temperature solution
VALVE_TOLERANCE = 1e-4  # share of room-minutes whose valve may still disagree with their heat need


@dataclass(frozen=True)
class RoomLoads:
    """What the occupants do to each room per minute: `[rooms, minutes]`."""

    co2: FloatArray  # generation, m^3/s
    moisture: FloatArray  # g/s
    heat: FloatArray  # W from people and appliances
    ach: FloatArray  # air changes per hour including windows, fans, hoods
    setpoint: FloatArray  # deg C per room, NaN while the heating is off


@dataclass(frozen=True)
class RoomClimate:
    """The true indoor climate per room and minute: `[rooms, minutes]`."""

    co2: FloatArray  # ppm
    temperature: FloatArray  # deg C
    humidity: FloatArray  # relative, %
    daylight: FloatArray  # lx from the windows (lamps come on top)


def room_climate(rooms: Sequence[RoomSpec], loads: RoomLoads, outdoor: Weather) -> RoomClimate:
    """Solve the three balances for all rooms of a home at once."""
    volume = np.array([room.volume for room in rooms])
    daylight_factor = np.array([room.daylight_factor for room in rooms])
    v = volume[:, None]
    ach = np.maximum(loads.ach, 1e-3)
    flow = ach * v / 3600.0  # m^3/s
    air_rate = ach / 60.0  # per minute

    co2_eq = outdoor.co2[None, :] + loads.co2 * 1e6 / flow
    co2 = relax(air_rate, co2_eq, co2_eq[:, 0])

    water_eq = outdoor.humidity[None, :] + loads.moisture / flow
    water = relax(air_rate, water_eq, water_eq[:, 0])

    temperature = _room_temperature(rooms, loads, outdoor)
    relative = np.clip(100.0 * water / saturation_humidity(temperature), 1.0, 100.0)
    daylight = daylight_factor[:, None] * outdoor.illuminance[None, :]
    return RoomClimate(co2=co2, temperature=temperature, humidity=relative, daylight=daylight)


def _room_temperature(rooms: Sequence[RoomSpec], loads: RoomLoads, outdoor: Weather) -> FloatArray:
    """Room temperature under radiators with thermostatic valves.

    A valve delivers the weather-compensated output `H (T_set - T_out,daily)` plus a
    proportional correction `K (T_set - T)`, but never less than nothing. The model is linear
    while the valve is open, so it is solved with the valve state fixed, and the steps where
    that asks for negative heat are switched off and solved again; the closings shrink each
    round, and the last few stragglers (a step asking for a few watts below nothing) are left.

    Rooms take hours to warm or cool, so this runs on 5-minute steps (inputs averaged over
    the step) and is interpolated back to minutes.
    """
    v = np.array([room.volume for room in rooms])[:, None]
    ua = np.array([room.ua for room in rooms])[:, None]
    tau_hours = np.array([room.tau_hours for room in rooms])[:, None]
    window_area = np.array([room.window_area for room in rooms])[:, None]
    design = ua + 0.34 * loads.ach.min(axis=1, keepdims=True) * v
    gain = VALVE_GAIN * design
    capacity = ua * tau_hours * 3600.0
    # W/K, fabric plus air exchange; then the heat that holds with the valve closed and open
    conductance = _step_mean(ua + 0.34 * loads.ach * v)
    free = _step_mean(
        (ua + 0.34 * loads.ach * v) * outdoor.temperature[None, :]
        + loads.heat
        + 0.25 * window_area * outdoor.irradiance[None, :]
    )
    setpoint_minutes = _step_mean(loads.setpoint)  # NaN where the heating is off
    season = ~np.isnan(setpoint_minutes)
    setpoint = np.nan_to_num(setpoint_minutes, nan=0.0)
    daily = _step_mean(outdoor.daily_temperature[None, :])
    feed = design * np.maximum(setpoint - daily, 0.0)
    target_closed = free / conductance
    target_open = (free + feed + gain * setpoint) / (conductance + gain)
    seconds = 60.0 * THERMAL_STEP
    rate_closed, rate_open = (
        seconds * conductance / capacity,
        seconds * (conductance + gain) / capacity,
    )
    valve_open = season
    for _ in range(VALVE_ITERATIONS):
        target = np.where(valve_open, target_open, target_closed)
        steps = relax(np.where(valve_open, rate_open, rate_closed), target, target[:, 0])
        wanted = season & (feed + gain * (setpoint - steps) > 0.0)
        flips = int(np.count_nonzero(wanted != valve_open))
        valve_open = wanted
        if flips <= VALVE_TOLERANCE * wanted.size:
            break
    # back to minutes: linear between step starts, the last step held
    following = np.concatenate([steps[:, 1:], steps[:, -1:]], axis=1)
    fraction = np.arange(THERMAL_STEP) / THERMAL_STEP
    minutes = steps[:, :, None] + (following - steps)[:, :, None] * fraction[None, None, :]
    return np.asarray(minutes.reshape(len(rooms), -1)[:, : loads.ach.shape[1]], dtype=np.float64)


def _step_mean(minutes: FloatArray) -> FloatArray:
    """Means over consecutive `THERMAL_STEP`-minute blocks (the last one may be shorter)."""
    rows, n = minutes.shape
    blocks = -(-n // THERMAL_STEP)
    padded = np.concatenate(
        [minutes, np.repeat(minutes[:, -1:], blocks * THERMAL_STEP - n, axis=1)], axis=1
    )
    return np.asarray(padded.reshape(rows, blocks, THERMAL_STEP).mean(axis=2), dtype=np.float64)


def heating_setpoints(
    occupied_awake: npt.NDArray[np.bool_],
    comfort: float,
    setback: float,
    offsets: FloatArray,
    daily_outdoor: FloatArray,
) -> FloatArray:
    """Per-room setpoints `[R, M]`: comfort while someone is up at home, else setback; NaN
    (heating off) outside the heating season."""
    level = np.where(occupied_awake, comfort, setback)
    season = daily_outdoor < HEATING_SEASON_BELOW
    return np.where(season[None, :], level[None, :] + offsets[:, None], np.nan)
