"""Install spatialvlm_ros as an ament_python package (share/ data files and console scripts)."""

from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'spatialvlm_ros'


def _data_files():
    """Ament index marker, package.xml, launch/ and config/ into share/<package>/."""
    files = [
        ('share/ament_index/resource_index/packages', [os.path.join('resource', PACKAGE)]),
        (os.path.join('share', PACKAGE), ['package.xml']),
    ]
    for folder in ('launch', 'config'):
        paths = sorted(p for p in glob(os.path.join(folder, '*')) if os.path.isfile(p))
        if paths:
            files.append((os.path.join('share', PACKAGE, folder), paths))
    return files


CORE = [
    'numpy>=1.24',
    'scipy>=1.10',
    'opencv-python-headless>=4.8',
    'pyyaml>=6',
    'tqdm>=4.60',
    'matplotlib>=3.7',
    'rosbags>=0.10',
    'scikit-learn>=1.3',
    'pyarrow>=14',
]

# Real expert models and VLMs through transformers, loaded from local folders only.
HF = ['torch>=2.2', 'transformers>=5.0', 'tokenizers>=0.19', 'safetensors>=0.4', 'pillow>=9']

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'benchmarks']),
    package_data={PACKAGE: ['py.typed', 'synth/templates/*.json', 'model/default_model/*']},
    data_files=_data_files(),
    python_requires='>=3.10',
    install_requires=['setuptools'] + CORE,
    extras_require={
        'sim': ['pybullet>=3.2.5'],
        'hf': HF,
        'train': HF + ['accelerate>=0.30', 'peft>=0.11', 'tensorboard>=2.14'],
        'ray': ['ray[data]>=2.9'],
        'rl': ['gymnasium>=1.0', 'stable-baselines3>=2.3'],
        'dev': ['pytest>=7', 'datasets>=2.18', 'ruff>=0.5', 'mypy>=1.8', 'flake8>=4,<5',
                'ament-lint-flake8', 'ament-lint-pep257', 'flake8-quotes', 'flake8-import-order',
                'flake8-builtins', 'flake8-comprehensions', 'flake8-docstrings'],
    },
    zip_safe=False,  # data files (launch, config, the default model) are read from disk
    maintainer='spatialvlm_ros maintainers',
    maintainer_email='maintainers@spatialvlm-ros.invalid',
    description='SpatialVLM reproduction for ROS 2: data engine, spatial VLM, reward node.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'spatialvlm = spatialvlm_ros.cli:main',
            'reward_node = spatialvlm_ros.ros.reward_node:main',
            'sim_camera_node = spatialvlm_ros.ros.sim_camera_node:main',
        ],
    },
)
