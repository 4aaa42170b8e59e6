"""The thermal model of the demo office: pure, deterministic given the seed and the times.

Units: temperatures degC, power kW, thermal capacity kJ/K, airflow kg/s, time s. The state is a
flat dict keyed by the site's point ids (``zone1.temp``, ``ahu1.sat``...), so the Modbus face can
serve it without a mapping table. Inputs (setpoints, schedules, commands) live in the same dict:
a write to ``zone2.cool_sp`` changes the next step.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = [
    "CP_AIR",
    "INPUTS",
    "IOT_OFFSET",
    "MODELLED",
    "SUBMETERS",
    "ZONES",
    "Building",
    "ZoneSpec",
    "chiller_cop",
    "outdoor_temp",
    "relative_humidity",
]

CP_AIR = 1.005  # kJ/(kg K)
MAX_SUBSTEP_S = 30.0  # explicit Euler stays stable well below the zones' time constants (~1 h)
SAT_TAU_S = 300.0
CHWST_TAU_S = 600.0
UNOCC_COOL_SP, UNOCC_HEAT_SP = 28.0, 16.0
U32 = 2**32
# Indoor air quality: CO2 and moisture balances of each zone's air volume.
RHO_AIR = 1.2  # kg/m3
CO2_OUTDOOR = 420.0  # ppm
CO2_PER_PERSON = 20.0 / 3600 / 1000  # m3/s exhaled (~20 L/h, office work)
MOISTURE_PER_PERSON = 70.0 / 3600  # g/s of water vapour (~70 g/h)
INFILTRATION_ACH = 0.5  # air changes per hour leaking in through the envelope
P_ATM = 1013.25  # hPa
CP_WATER = 4.19  # kJ/(kg K); a litre of water is a kilogram
CHW_DESIGN_FLOW_LS = 8.0  # l/s at full pump speed
CHW_DP_DESIGN_KPA = 100.0  # the pressure full speed holds
CHW_DP_TAU_S = 20.0
CHW_PUMP_KW = 2.2
# Real IoT sensors disagree a little with the BMS: a fixed offset per zone (degC).
IOT_OFFSET: dict[str, float] = {"zone1": 0.4, "zone2": -0.3, "zone3": 0.2, "zone4": -0.2}
SUBMETERS = ("lighting", "plugs", "hvac")


@dataclass(frozen=True)
class ZoneSpec:
    name: str
    capacity_kj_k: float  # C
    ua_kw_k: float  # 1/R
    design_airflow: float  # kg/s at 100 % damper
    solar_peak_kw: float
    lights_kw: float  # lighting and plugs while in occupied mode
    people_kw: float  # when the occupancy sensor sees people
    max_reheat_kw: float
    always_empty: bool = False
    initial_temp: float = 23.0
    volume_m3: float = 400.0
    people: int = 10  # when occupied


# zone2 faces south and its airflow is undersized: on a sunny afternoon it settles ~26 degC,
# well above its 23 degC cooling setpoint (the agent's comfort check must find it).
# zone3 is a meeting room nobody uses today, still conditioned by its schedule.
ZONES: tuple[ZoneSpec, ...] = (
    ZoneSpec("zone1", 3000, 0.15, 1.0, 0.6, 1.5, 1.0, 3.0, initial_temp=23.2),
    ZoneSpec("zone2", 3000, 0.15, 0.55, 4.0, 1.5, 1.0, 3.0, initial_temp=25.5),
    ZoneSpec("zone3", 2000, 0.10, 0.6, 1.0, 0.8, 1.5, 2.0, always_empty=True, initial_temp=22.5,
             volume_m3=250.0, people=15),
    # zone4 is a small north office behind a BACnet VAV controller; nothing wrong with it.
    ZoneSpec("zone4", 1500, 0.08, 0.5, 0.3, 0.6, 0.5, 1.5, initial_temp=22.6, volume_m3=200.0, people=4),
)

# Writable inputs and their defaults.
INPUTS: dict[str, float | bool] = {
    "ahu1.sat_sp": 13.0,
    "ahu1.duct_static_sp": 250.0,
    "ahu1.oa_min_sp": 20.0,
    "ahu1.fan_cmd": True,
    "chiller.chwst_sp": 7.0,
    "chiller.enable": True,
    "chw.dp_sp": 60.0,  # kPa across the furthest coil: the plant PLC's pump control setpoint
    "chw.pump_cmd": True,
    **{f"{z.name}.{k}": v for z in ZONES for k, v in
       (("cool_sp", 23.0), ("heat_sp", 20.0), ("occ_start", 7.0), ("occ_end", 19.0))},
}

_OUTPUTS = (
    "ahu1.sat", "ahu1.mat", "ahu1.rat", "ahu1.oat", "ahu1.fan_speed", "ahu1.oa_damper",
    "ahu1.duct_static", "ahu1.fan_status", "chiller.power", "chiller.cop", "chiller.chwst",
    "meter.power", "meter.energy",
    # The chilled-water loop the plant PLC runs (the sim's OPC-UA face).
    "chw.dp", "chw.pump_speed", "chw.flow", "chw.rt", "chw.pump_power",
    *(f"{z.name}.{k}" for z in ZONES for k in ("temp", "occ_mode", "occ", "damper", "reheat")),
    # What the IoT sensors and the electric sub-meters see (the sim's MQTT face).
    *(f"{z.name}.{k}" for z in ZONES for k in ("iot_temp", "rh", "co2", "iot_occ")),
    *(f"submeter.{m}" for m in SUBMETERS),
)
MODELLED: frozenset[str] = frozenset(INPUTS) | frozenset(_OUTPUTS)


def outdoor_temp(hour: float, mean: float = 24.0, amplitude: float = 6.0) -> float:
    """A summer day: minimum at 05:00, maximum at 15:00 (a warped sine, continuous)."""
    if 5.0 <= hour < 15.0:
        return mean - amplitude * math.cos(math.pi * (hour - 5.0) / 10.0)
    since_peak = (hour - 15.0) % 24.0
    return mean + amplitude * math.cos(math.pi * since_peak / 14.0)


def solar_fraction(hour: float) -> float:
    """0..1 sun on the facades, daylight 06:00..20:00, peaking at 13:00."""
    if not 6.0 <= hour <= 20.0:
        return 0.0
    if hour <= 13.0:
        return math.sin(math.pi / 2 * (hour - 6.0) / 7.0)
    return math.cos(math.pi / 2 * (hour - 13.0) / 7.0)


def outdoor_moisture(hour: float) -> float:
    """Outdoor humidity ratio (g/kg): a humid summer, a little drier in the afternoon."""
    return 10.5 - 1.0 * solar_fraction(hour)


def _vapour_pressure_sat(t: float) -> float:
    """Saturation vapour pressure over water (hPa), Magnus formula."""
    return 6.112 * math.exp(17.62 * t / (243.12 + t))


def saturation_moisture(t: float) -> float:
    """Humidity ratio (g/kg) of saturated air at ``t`` degC."""
    e = _vapour_pressure_sat(t)
    return 622.0 * e / (P_ATM - e)


def relative_humidity(w: float, t: float) -> float:
    """%RH of air with humidity ratio ``w`` (g/kg) at ``t`` degC, shown as a sensor would (30..65 %
    is what this building's sensors ever see: the coil dries the air, nobody humidifies it)."""
    e = w * P_ATM / (622.0 + w)
    return _clamp(100.0 * e / _vapour_pressure_sat(t), 30.0, 65.0)


def chiller_cop(oat: float, chwst_sp: float) -> float:
    return min(7.0, max(2.0, 6.5 - 0.1 * (oat - 15.0) + 0.15 * (chwst_sp - 7.0)))


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, x))


def _lag(value: float, target: float, dt: float, tau: float) -> float:
    return target + (value - target) * math.exp(-dt / tau)


@dataclass
class Building:
    """The building's true state, advanced by ``advance(dt)``; no I/O, no wall clock."""

    now: datetime  # local site time (aware or naive; only the clock hour is used)
    seed: int = 42
    meter_start_wh: int = U32 - 1 - 20_000
    state: dict[str, float | bool] = field(default_factory=dict)
    _energy_wh: float = 0.0  # fractional Wh not yet counted
    # Zone humidity ratios (g/kg): hidden state behind the %RH the sensors report.
    _moisture: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.state
        for key, value in INPUTS.items():
            s.setdefault(key, value)
        for z in ZONES:
            s.setdefault(f"{z.name}.temp", z.initial_temp)
        s.setdefault("ahu1.sat", float(s["ahu1.sat_sp"]))
        s.setdefault("chiller.chwst", float(s["chiller.chwst_sp"]))
        s.setdefault("chw.dp", float(s["chw.dp_sp"]))
        for z in ZONES:
            s.setdefault(f"{z.name}.co2", 550.0)
            self._moisture.setdefault(z.name, 0.5 * saturation_moisture(z.initial_temp))
        s.setdefault("meter.energy", float(self.meter_start_wh % U32) / 1000.0)
        self._counter = self.meter_start_wh % U32
        self._outputs(0.0)

    # -- public -------------------------------------------------------------------------------
    @property
    def hour(self) -> float:
        return self.now.hour + self.now.minute / 60 + self.now.second / 3600

    @property
    def energy_counter_wh(self) -> int:
        """The meter's raw uint32 Wh register."""
        return self._counter

    def set(self, point_id: str, value: float | bool) -> None:
        """Force a value, as the device itself would (a write or a test override)."""
        self.state[point_id] = value
        if point_id == "meter.energy":
            self._counter = round(float(value) * 1000) % U32
            self._energy_wh = 0.0

    def advance(self, dt: float) -> None:
        """Move the clock ``dt`` sim seconds on, in sub-steps small enough to stay stable."""
        while dt > 1e-9:
            h = min(dt, MAX_SUBSTEP_S)
            self._integrate(h)
            self.now += timedelta(seconds=h)
            self._outputs(h)
            dt -= h

    def occupied_mode(self, zone: str) -> bool:
        start, end = float(self.state[f"{zone}.occ_start"]), float(self.state[f"{zone}.occ_end"])
        return start <= self.hour < end

    def occupancy(self, spec: ZoneSpec) -> bool:
        """Seeded pattern: in occupied hours each 15-minute slot is busy with p=0.85."""
        if spec.always_empty or not self.occupied_mode(spec.name):
            return False
        slot = int(self.now.timestamp() // 900) if self.now.tzinfo else int(self.now.toordinal() * 96 + self.hour * 4)
        return random.Random(f"{self.seed}:{spec.name}:{slot}").random() < 0.85

    # -- model --------------------------------------------------------------------------------
    def _setpoints(self, z: ZoneSpec) -> tuple[float, float]:
        if self.occupied_mode(z.name):
            return float(self.state[f"{z.name}.cool_sp"]), float(self.state[f"{z.name}.heat_sp"])
        return UNOCC_COOL_SP, UNOCC_HEAT_SP

    def _zone_control(self, z: ZoneSpec) -> tuple[float, float]:
        """(damper %, reheat kW): proportional cooling over 1.5 K, reheat over 1 K below heat_sp."""
        t = float(self.state[f"{z.name}.temp"])
        cool_sp, heat_sp = self._setpoints(z)
        damper = 20.0 + 80.0 * _clamp((t - cool_sp) / 1.5, 0.0, 1.0)
        reheat = z.max_reheat_kw * _clamp((heat_sp - t) / 1.0, 0.0, 1.0)
        return damper, reheat

    def _airflow(self, z: ZoneSpec) -> float:
        if not self.state["ahu1.fan_cmd"]:
            return 0.0
        return z.design_airflow * float(self.state[f"{z.name}.damper"]) / 100.0

    def _integrate(self, dt: float) -> None:
        s = self.state
        oat, sun, sat = float(s["ahu1.oat"]), solar_fraction(self.hour), float(s["ahu1.sat"])
        for z in ZONES:
            t = float(s[f"{z.name}.temp"])
            q_int = (z.lights_kw if self.occupied_mode(z.name) else 0.2 * z.lights_kw) + (
                z.people_kw if s[f"{z.name}.occ"] else 0.0
            )
            q_hvac = self._airflow(z) * CP_AIR * (sat - t) + float(s[f"{z.name}.reheat"])
            q = z.ua_kw_k * (oat - t) + q_int + z.solar_peak_kw * sun + q_hvac
            s[f"{z.name}.temp"] = t + dt * q / z.capacity_kj_k
            self._air_quality(z, dt)
        self._ahu_and_plant(dt)

    def _air_quality(self, z: ZoneSpec, dt: float) -> None:
        """CO2 and moisture: well-mixed balances, integrated exactly (they relax exponentially)."""
        s = self.state
        people = z.people if s[f"{z.name}.occ"] else 0
        supply = self._airflow(z)  # kg/s
        outdoor = supply * float(s["ahu1.oa_damper"]) / 100.0 + INFILTRATION_ACH * z.volume_m3 * RHO_AIR / 3600
        # CO2 (ppm): exhaled CO2 against outdoor air at 420 ppm (recirculated air changes nothing).
        co2_ss = CO2_OUTDOOR + people * CO2_PER_PERSON * 1e6 * RHO_AIR / outdoor
        s[f"{z.name}.co2"] = _lag(float(s[f"{z.name}.co2"]), co2_ss, dt, z.volume_m3 * RHO_AIR / outdoor)
        # Moisture (g/kg): people add vapour; outdoor air brings its own; a chilling coil dries supply air.
        w, w_out = self._moisture[z.name], outdoor_moisture(self.hour)
        oa = float(s["ahu1.oa_damper"]) / 100.0
        w_mix = oa * w_out + (1 - oa) * w  # the other zones' return air is treated as this zone's
        w_supply = min(w_mix, saturation_moisture(float(s["ahu1.sat"]) + 1.0)) if s["chiller.power"] else w_mix
        infil = outdoor - supply * oa
        flow = supply + infil
        w_ss = (supply * w_supply + infil * w_out + people * MOISTURE_PER_PERSON) / flow
        self._moisture[z.name] = _lag(w, w_ss, dt, z.volume_m3 * RHO_AIR / flow)

    def _ahu_and_plant(self, dt: float) -> None:
        s = self.state
        fan_on = bool(s["ahu1.fan_cmd"])
        flows = {z.name: self._airflow(z) for z in ZONES}
        total = sum(flows.values())
        temps = {z.name: float(s[f"{z.name}.temp"]) for z in ZONES}
        rat = sum(flows[n] * temps[n] for n in temps) / total if total else sum(temps.values()) / len(temps)
        oat = float(s["ahu1.oat"])
        cooling = any(float(s[f"{z.name}.damper"]) > 20.0 for z in ZONES)
        oa = float(s["ahu1.oa_min_sp"])
        if fan_on and oat < rat and cooling:
            oa = 100.0  # economiser: free cooling whenever outdoor air is cooler than return
        mat = oa / 100 * oat + (1 - oa / 100) * rat
        chwst, chwst_sp = float(s["chiller.chwst"]), float(s["chiller.chwst_sp"])
        enabled = bool(s["chiller.enable"])
        # Coil leaving air cannot be colder than the chilled water plus its approach.
        target = max(float(s["ahu1.sat_sp"]), chwst + 3.0)
        chilling = fan_on and enabled and mat > target
        sat_target = target if chilling else (mat if fan_on else rat)
        s["ahu1.sat"] = _lag(float(s["ahu1.sat"]), sat_target, dt, SAT_TAU_S)
        s["chiller.chwst"] = _lag(chwst, chwst_sp if chilling else 15.0, dt, CHWST_TAU_S)
        load = total * CP_AIR * (mat - float(s["ahu1.sat"])) if chilling else 0.0
        cop = chiller_cop(oat, chwst_sp)
        s.update({"ahu1.rat": rat, "ahu1.mat": mat, "ahu1.oa_damper": oa if fan_on else 0.0,
                  "chiller.cop": cop, "chiller.power": max(0.0, load) / cop})
        self._chw_loop(dt, max(0.0, load))
        self._meter(dt)

    def _chw_loop(self, dt: float, load_kw: float) -> None:
        """The pump holds the loop's differential pressure at its setpoint: speed follows the
        square root of the setpoint, flow the speed, and the water returns warmer by the coil
        load. Its power is metered on its own panel, so the main meter does not see it."""
        s = self.state
        on = bool(s["chw.pump_cmd"])
        sp = float(s["chw.dp_sp"])
        speed = _clamp(100.0 * math.sqrt(max(sp, 0.0) / CHW_DP_DESIGN_KPA), 20.0, 100.0) if on else 0.0
        s["chw.dp"] = _lag(float(s["chw.dp"]), sp if on else 0.0, dt, CHW_DP_TAU_S)
        flow = CHW_DESIGN_FLOW_LS * speed / 100.0
        chwst = float(s["chiller.chwst"])
        rise = load_kw / (CP_WATER * flow) if flow > 0 else 0.0
        s.update({"chw.pump_speed": speed, "chw.flow": flow, "chw.rt": chwst + rise,
                  "chw.pump_power": CHW_PUMP_KW * (speed / 100.0) ** 3})

    def _meter(self, dt: float) -> None:
        s = self.state
        speed = float(s["ahu1.fan_speed"]) / 100
        fan_kw = 7.5 * speed**3 * float(s["ahu1.duct_static_sp"]) / 250.0
        base = 6.0 if any(self.occupied_mode(z.name) for z in ZONES) else 2.5
        reheat = sum(float(s[f"{z.name}.reheat"]) for z in ZONES)
        power = base + fan_kw + float(s["chiller.power"]) + reheat
        s["meter.power"] = power
        # Sub-meters split the same power: lighting and plugs share the base load, hvac is the rest.
        lighting = base * (0.55 if base > 3.0 else 0.3)
        s.update({"submeter.lighting": lighting, "submeter.plugs": base - lighting,
                  "submeter.hvac": fan_kw + float(s["chiller.power"]) + reheat})
        self._energy_wh += power * 1000.0 * dt / 3600.0
        whole = int(self._energy_wh)
        self._energy_wh -= whole
        self._counter = (self._counter + whole) % U32  # the device's uint32 register wraps
        s["meter.energy"] = self._counter / 1000.0

    def _outputs(self, dt: float) -> None:
        """Quantities that follow the state without lag (controls, weather, statuses)."""
        s = self.state
        s["ahu1.oat"] = outdoor_temp(self.hour)
        fan_on = bool(s["ahu1.fan_cmd"])
        demand = 0.0
        for z in ZONES:
            damper, reheat = self._zone_control(z)
            s.update({f"{z.name}.damper": damper, f"{z.name}.reheat": reheat,
                      f"{z.name}.occ_mode": self.occupied_mode(z.name), f"{z.name}.occ": self.occupancy(z)})
            s.update({f"{z.name}.iot_temp": float(s[f"{z.name}.temp"]) + IOT_OFFSET.get(z.name, 0.0),
                      f"{z.name}.iot_occ": s[f"{z.name}.occ"],
                      f"{z.name}.rh": relative_humidity(self._moisture[z.name], float(s[f"{z.name}.temp"]))})
            demand += z.design_airflow * damper / 100
        design = sum(z.design_airflow for z in ZONES)
        speed = _clamp(100.0 * demand / design, 20.0, 100.0) if fan_on else 0.0
        sp = float(s["ahu1.duct_static_sp"])
        s.update({"ahu1.fan_speed": speed, "ahu1.fan_status": fan_on,
                  "ahu1.duct_static": sp * min(1.0, (speed / 100) ** 2 / 0.25) if fan_on else 0.0})
        if dt == 0.0:
            self._ahu_and_plant(0.0)
