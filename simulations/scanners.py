"""Simulated CT scanner profiles: how a vendor turns a scene in HU into stored DICOM pixels.

SIMULATED. The manufacturer and model names are real products' names, so that headers look
like a hospital's export, but every number here (noise, blur, field of view, intensity
response, bias field, pixel encoding) is invented to give plausible, distinct domain shifts.
None of it describes how the named scanners behave. Anything reported per scanner on phantom
data must say that the scanner differences are simulated (`ScannerProfile.simulated`).

The acquisition chain of one image is `acquire` (scene HU on the scanner's pixel grid ->
measured intensities: PSF blur, bias field, correlated noise, intensity response) followed by
`PixelEncoding.encode` (measured intensities -> stored integers: the inverse of the DICOM
modality LUT, and the MONOCHROME1 inversion where the profile uses it).

`US_PROFILES` are SIMULATED ultrasound systems (gain, contrast, speckle, blur applied to
real 8-bit images: the ``breastmnist`` scenario source), equally invented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

Photometric = Literal["MONOCHROME1", "MONOCHROME2"]

#: Per-image spread of the noise level around a profile's nominal sigma (patient size, dose).
DOSE_NOISE_FACTOR = (0.85, 1.2)
#: Per-image spread of the bias field strength around a profile's nominal amplitudes.
BIAS_STRENGTH_FACTOR = (0.5, 1.0)


@dataclass(frozen=True)
class PixelEncoding:
    """How measured intensities are stored: BitsStored, sign, rescale and photometric.

    A reader recovers the measured intensity with the modality LUT
    (``stored * rescale_slope + rescale_intercept``) and, for MONOCHROME1, then maps
    ``x -> lo + hi - x`` where ``(lo, hi)`` is `value_range`. BitsAllocated is always 16.
    """

    bits_stored: Literal[12, 16]
    signed: bool
    rescale_slope: float
    rescale_intercept: float
    photometric: Photometric = "MONOCHROME2"

    @property
    def pixel_representation(self) -> int:
        """DICOM PixelRepresentation: 1 for two's complement, 0 for unsigned."""
        return int(self.signed)

    @property
    def stored_range(self) -> tuple[int, int]:
        """The smallest and largest storable integer for BitsStored and the sign."""
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1

    @property
    def value_range(self) -> tuple[float, float]:
        """The modality LUT outputs of `stored_range` (measured units, e.g. HU)."""
        lo, hi = self.stored_range
        return (
            lo * self.rescale_slope + self.rescale_intercept,
            hi * self.rescale_slope + self.rescale_intercept,
        )

    def encode(self, measured: np.ndarray) -> np.ndarray:
        """Measured intensities (float, HU-like) -> stored pixels (int16 or uint16, 2-D).

        Values are rounded to the nearest step of ``rescale_slope`` and clipped to the
        storable range; MONOCHROME1 stores ``lo + hi - stored`` so that bright is low.
        """
        lo, hi = self.stored_range
        stored = np.clip(np.rint((measured - self.rescale_intercept) / self.rescale_slope), lo, hi)
        if self.photometric == "MONOCHROME1":
            stored = lo + hi - stored
        return stored.astype("<i2" if self.signed else "<u2")

    def window(self, center_hu: float, width_hu: float) -> tuple[float, float]:
        """A display window given in HU -> (WindowCenter, WindowWidth) in modality LUT units."""
        if self.photometric == "MONOCHROME1":
            lo, hi = self.value_range
            return lo + hi - center_hu, width_hu
        return center_hu, width_hu


@dataclass(frozen=True)
class IntensityResponse:
    """Calibration of reconstructed values: ``offset + gain * h + curvature * h * |h| / 1000``.

    ``h`` and ``offset_hu`` are in HU; ``curvature`` is dimensionless (the term is
    ``curvature * 1000`` HU at |h| = 1000 HU, a fraction of an HU in soft tissue).
    """

    gain: float
    offset_hu: float
    curvature: float

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """HU -> measured intensity (same shape, float64)."""
        return self.offset_hu + self.gain * hu + self.curvature * hu * np.abs(hu) / 1000.0


@dataclass(frozen=True)
class BiasField:
    """A smooth low-frequency field: a linear ramp in a random direction plus radial cupping.

    ``multiplicative`` scales attenuation (HU + 1000) by ``1 + field`` (amplitudes are
    fractions); ``additive`` adds ``field`` in HU. ``ramp`` is the amplitude at the edge of the
    field of view; ``cupping`` > 0 darkens the centre relative to the edge.
    """

    mode: Literal["multiplicative", "additive"]
    ramp: float
    cupping: float

    def apply(self, hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Add a field of random orientation and strength to a square HU image."""
        angle = rng.uniform(0.0, 2.0 * np.pi)
        strength = rng.uniform(*BIAS_STRENGTH_FACTOR)
        axis = np.linspace(-1.0, 1.0, hu.shape[0])
        y, x = np.meshgrid(axis, axis, indexing="ij")
        field = strength * (
            self.ramp * (x * np.cos(angle) + y * np.sin(angle))
            + self.cupping * (x * x + y * y - 2.0 / 3.0)
        )
        if self.mode == "multiplicative":
            return (hu + 1000.0) * (1.0 + field) - 1000.0
        return hu + field


@dataclass(frozen=True)
class ScannerProfile:
    """A SIMULATED CT scanner: acquisition physics and DICOM encoding of one vendor model.

    Lengths in mm, ``kvp`` in kV, noise in HU (standard deviation per pixel at nominal
    dose). ``fov_mm`` is the reconstruction diameter: PixelSpacing = fov_mm / image size.
    """

    name: str
    manufacturer: str
    model: str
    software_versions: str
    convolution_kernel: tuple[str, ...]
    kvp: float
    slice_thickness_mm: float
    fov_mm: float
    psf_sigma_mm: float
    noise_sigma_hu: float
    noise_corr_mm: float
    response: IntensityResponse
    bias: BiasField
    encoding: PixelEncoding
    window_center_hu: float = 40.0
    window_width_hu: float = 400.0
    simulated: bool = True

    @property
    def scanner_group(self) -> str:
        """``"<Manufacturer> <ManufacturerModelName>"``, the scanner stratum downstream."""
        return f"{self.manufacturer} {self.model}"

    def pixel_spacing_mm(self, image_size: int) -> float:
        """Square pixel size in mm for an image of ``image_size`` x ``image_size`` pixels."""
        return self.fov_mm / image_size


def acquire(
    hu: np.ndarray, profile: ScannerProfile, pixel_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Render a scene through a scanner: PSF blur, bias field, correlated noise, response.

    ``hu`` is the scene rasterised on the profile's grid (square, HU, pixel size
    ``pixel_mm``). Returns the measured intensities (float64, same shape) that the DICOM
    file must reproduce after the modality LUT. Draws from ``rng`` in a fixed order.
    """
    blurred = ndimage.gaussian_filter(hu, profile.psf_sigma_mm / pixel_mm, mode="nearest")
    biased = profile.bias.apply(blurred, rng)
    sigma = profile.noise_sigma_hu * rng.uniform(*DOSE_NOISE_FACTOR)
    noise = ndimage.gaussian_filter(
        rng.standard_normal(hu.shape), profile.noise_corr_mm / pixel_mm, mode="wrap"
    )
    return profile.response.apply(biased + noise * (sigma / noise.std()))


#: The simulated scanner profiles by name. Encodings cover 12 and 16 bits stored, signed and
#: unsigned pixels, four rescale slope/intercept pairs and one MONOCHROME1 profile.
PROFILES: dict[str, ScannerProfile] = {
    p.name: p
    for p in (
        ScannerProfile(
            name="siemens_force",
            manufacturer="SIEMENS",
            model="SOMATOM Force",
            software_versions="syngo CT VB10A",
            convolution_kernel=("Br40d", "3"),
            kvp=100,
            slice_thickness_mm=1.0,
            fov_mm=150,
            psf_sigma_mm=0.9,
            noise_sigma_hu=9,
            noise_corr_mm=0.8,
            response=IntensityResponse(gain=1.0, offset_hu=0.0, curvature=0.0),
            bias=BiasField("multiplicative", ramp=0.01, cupping=0.01),
            encoding=PixelEncoding(12, signed=False, rescale_slope=1.0, rescale_intercept=-1024.0),
        ),
        ScannerProfile(
            name="siemens_edge",
            manufacturer="SIEMENS",
            model="SOMATOM Definition Edge",
            software_versions="syngo CT VA48A",
            convolution_kernel=("B30f",),
            kvp=120,
            slice_thickness_mm=3.0,
            fov_mm=170,
            psf_sigma_mm=1.2,
            noise_sigma_hu=14,
            noise_corr_mm=1.2,
            response=IntensityResponse(gain=1.02, offset_hu=4.0, curvature=0.0),
            bias=BiasField("multiplicative", ramp=0.015, cupping=0.02),
            encoding=PixelEncoding(12, signed=True, rescale_slope=1.0, rescale_intercept=0.0),
        ),
        ScannerProfile(
            name="ge_revolution",
            manufacturer="GE MEDICAL SYSTEMS",
            model="Revolution CT",
            software_versions="revo_ct_22ES.38",
            convolution_kernel=("STANDARD",),
            kvp=120,
            slice_thickness_mm=2.5,
            fov_mm=160,
            psf_sigma_mm=1.0,
            noise_sigma_hu=11,
            noise_corr_mm=1.0,
            response=IntensityResponse(gain=0.98, offset_hu=-6.0, curvature=0.01),
            bias=BiasField("additive", ramp=12.0, cupping=6.0),
            encoding=PixelEncoding(16, signed=True, rescale_slope=1.0, rescale_intercept=-1024.0),
        ),
        ScannerProfile(
            name="ge_optima",
            manufacturer="GE MEDICAL SYSTEMS",
            model="Optima CT660",
            software_versions="cte_ct660.23",
            convolution_kernel=("SOFT",),
            kvp=120,
            slice_thickness_mm=5.0,
            fov_mm=180,
            psf_sigma_mm=1.5,
            noise_sigma_hu=20,
            noise_corr_mm=1.6,
            response=IntensityResponse(gain=0.96, offset_hu=-10.0, curvature=0.02),
            bias=BiasField("additive", ramp=18.0, cupping=10.0),
            encoding=PixelEncoding(16, signed=True, rescale_slope=1.0, rescale_intercept=-1024.0),
        ),
        ScannerProfile(
            name="philips_ingenuity",
            manufacturer="Philips",
            model="Ingenuity CT",
            software_versions="4.1.4.0",
            convolution_kernel=("B",),
            kvp=120,
            slice_thickness_mm=2.0,
            fov_mm=165,
            psf_sigma_mm=1.1,
            noise_sigma_hu=13,
            noise_corr_mm=1.1,
            response=IntensityResponse(gain=1.05, offset_hu=8.0, curvature=-0.015),
            bias=BiasField("multiplicative", ramp=0.02, cupping=-0.01),
            encoding=PixelEncoding(16, signed=False, rescale_slope=0.5, rescale_intercept=-1024.0),
        ),
        ScannerProfile(
            name="canon_aquilion_one",
            manufacturer="CANON_MEC",
            model="Aquilion ONE",
            software_versions="V10.4SP0003E",
            convolution_kernel=("FC08",),
            kvp=100,
            slice_thickness_mm=0.5,
            fov_mm=140,
            psf_sigma_mm=0.8,
            noise_sigma_hu=23,
            noise_corr_mm=0.6,
            response=IntensityResponse(gain=1.03, offset_hu=2.0, curvature=0.03),
            bias=BiasField("multiplicative", ramp=0.025, cupping=0.015),
            encoding=PixelEncoding(
                12,
                signed=False,
                rescale_slope=2.0,
                rescale_intercept=-2048.0,
                photometric="MONOCHROME1",
            ),
        ),
    )
}


@dataclass(frozen=True)
class UltrasoundProfile:
    """A SIMULATED ultrasound system: how it changes an 8-bit B-mode image of a real case.

    ``gain`` and ``offset`` scale and shift grey levels (overall gain), ``gamma`` bends
    them (dynamic range / compression: > 1 darkens mid-greys), ``speckle`` is the standard
    deviation of multiplicative Gaussian noise (per image, spread by `DOSE_NOISE_FACTOR`)
    and ``blur_px`` a Gaussian blur in pixels (lateral resolution). Invented numbers: none
    describes the named product (`ScannerProfile` says the same of the CT profiles).
    """

    name: str
    manufacturer: str
    model: str
    software_versions: str
    transducer: str
    gain: float
    offset: float
    gamma: float
    speckle: float
    blur_px: float
    simulated: bool = True

    @property
    def scanner_group(self) -> str:
        """``"<Manufacturer> <ManufacturerModelName>"``, the scanner stratum downstream."""
        return f"{self.manufacturer} {self.model}"

    def acquire(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """An 8-bit grey image as this system would show it: blur, gain and offset,
        gamma, speckle; returns uint8 of the same shape. Draws from ``rng``."""
        x = ndimage.gaussian_filter(image.astype(np.float64), self.blur_px, mode="nearest")
        x = np.clip((x * self.gain + self.offset) / 255.0, 0.0, 1.0) ** self.gamma
        sigma = self.speckle * rng.uniform(*DOSE_NOISE_FACTOR)
        x = x * (1.0 + sigma * rng.standard_normal(x.shape))
        return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


#: The simulated ultrasound profiles by name (the ``breastmnist`` scenario source).
US_PROFILES: dict[str, UltrasoundProfile] = {
    p.name: p
    for p in (
        UltrasoundProfile(
            name="ge_logiq_e10",
            manufacturer="GE Healthcare",
            model="LOGIQ E10",
            software_versions="R3.1.2",
            transducer="ML6-15",
            gain=1.0,
            offset=0.0,
            gamma=1.0,
            speckle=0.04,
            blur_px=0.0,
        ),
        UltrasoundProfile(
            name="philips_epiq_7",
            manufacturer="Philips",
            model="EPIQ 7",
            software_versions="7.0.5",
            transducer="eL18-4",
            gain=1.15,
            offset=8.0,
            gamma=0.85,
            speckle=0.08,
            blur_px=0.4,
        ),
        UltrasoundProfile(
            name="siemens_acuson_s2000",
            manufacturer="SIEMENS",
            model="ACUSON S2000",
            software_versions="VC20A",
            transducer="18L6 HD",
            gain=0.85,
            offset=-6.0,
            gamma=1.25,
            speckle=0.12,
            blur_px=0.6,
        ),
        UltrasoundProfile(
            name="canon_aplio_i800",
            manufacturer="CANON_MEC",
            model="Aplio i800",
            software_versions="V6.0",
            transducer="i18LX5",
            gain=1.05,
            offset=-12.0,
            gamma=1.1,
            speckle=0.06,
            blur_px=0.3,
        ),
    )
}
