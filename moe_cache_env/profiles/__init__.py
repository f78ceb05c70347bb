"""Hardware profiles: the transfer and compute times the simulator's timing model reads.

A profile is a JSON file (format ``moe-profile/1``, see ``docs/hardware-profiles.md``). Shipped profiles live
in ``moe_cache_env/profiles/data/``; any other path can be given where a profile name is expected.
"""

from moe_cache_env.profiles.profile import (
    PROFILE_FORMAT,
    HardwareProfile,
    ProfileError,
    fit_transfer,
    list_profiles,
    load_profile,
    save_profile,
)

__all__ = [
    "PROFILE_FORMAT",
    "HardwareProfile",
    "ProfileError",
    "fit_transfer",
    "list_profiles",
    "load_profile",
    "save_profile",
]
