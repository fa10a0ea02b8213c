"""KuaiRand fixture files: one hand-checked world in the official layouts.

Shared by tests/test_kuairand.py and tests/fuzz_readers.py (test modules never import each
other: tests/test_imports.py).
"""

from __future__ import annotations

import csv
import os

T0 = 1_649_383_200  # 2022-04-08 10:00 Beijing (02:00 UTC), a Friday
DAY = 86_400
LOG_HEADER = ['user_id', 'video_id', 'date', 'hourmin', 'time_ms', 'is_click', 'is_like',
              'is_follow', 'is_comment', 'is_forward', 'is_hate', 'long_view', 'play_time_ms',
              'duration_ms', 'profile_stay_time', 'comment_stay_time', 'is_profile_enter',
              'is_rand', 'tab']
USER_HEADER = (['user_id', 'user_active_degree', 'is_lowactive_period', 'is_live_streamer',
                'is_video_author', 'follow_user_num', 'follow_user_num_range', 'fans_user_num',
                'fans_user_num_range', 'friend_user_num', 'friend_user_num_range',
                'register_days', 'register_days_range'] + [f'onehot_feat{k}' for k in range(18)])
VIDEO_HEADER = ['video_id', 'author_id', 'video_type', 'upload_dt', 'upload_type',
                'visible_status', 'video_duration', 'server_width', 'server_height', 'music_id',
                'music_type', 'tag']

# ---------------------------------------------------------------------------------- the fixture
# Dense ids: users 0 -> 1, 5 -> 2, 9 -> 3 (9 has no user_features row); videos 0, 10, 20, 30 ->
# 1..4 (30 has no video_features row). (user, video, ms after T0, click, like, long_view).
LOG_1 = [  # 4_08..4_21, user-major like the files: the time sort must reorder u5's first second
    (0, 30, 100_000, 1, 1, 1), (0, 10, 200_000, 0, 0, 0),
    (5, 0, 400, 1, 1, 0), (5, 10, 0, 1, 0, 1), (5, 20, 1_500, 0, 1, 0),
]
LOG_2 = [  # 4_22..5_08
    (5, 20, 14 * DAY * 1000, 1, 0, 1), (5, 30, 14 * DAY * 1000 + 10_000, 0, 0, 0),
    (9, 0, 14 * DAY * 1000 + 5_000, 1, 0, 0), (0, 20, 15 * DAY * 1000, 1, 0, 1),
]
LOG_RANDOM = [(5, 0, 14 * DAY * 1000 + 20_000, 0, 0, 0)]
ONEHOT_U0 = [str(k % 3) for k in range(18)]
ONEHOT_U5 = ['0', '0', '0', '1153.0', ''] + ['0'] * 13  # pandas writes a gappy int column so
USERS = [
    [0, 'high_active', 0, 0, 1, 5, '(0,10]', 312, '[100,1k)', 0, '0', 3624, '730+'] + ONEHOT_U0,
    [42, 'UNKNOWN', 0, 0, 0, 1, '(0,10]', 1, '[1,10)', 1, '[1,5)', 20, '15-30'] + ['0'] * 18,
    [5, 'full_active', 1, 0, 0, 60, '(50,100]', 0, '0', 2, '[1,5)', 100, '91-180'] + ONEHOT_U5,
]
VIDEOS = [
    [10, 77, 'AD', '2022-01-02', 'LongImport', 1, '60000.0', 720, 1280, 1, 4, '3'],
    [0, 500, 'NORMAL', '2020-07-08', 'ShortImport', 1, '17200.0', 720, 1280, 9, 4, '12,65'],
    [99, 1, 'NORMAL', '2020-07-08', 'Zzz', 1, '1000.0', 720, 1280, 9, 4, '1'],  # never logged
    [20, 500, 'NORMAL', '2021-03-01', 'ShortImport', 1, '', 720, 1280, '', '', ''],
]
FIXTURE_CONFIG = dict(session_gap=1800, num_candidates=2, clicked_len=3, liked_len=2,
                      long_viewed_len=2, eval_fraction=0.34, batch_size=2, num_threads=1)


def write_csv_file(path: str, name: str, header: list[str], rows: list[list]) -> None:
  with open(os.path.join(path, name), 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f, lineterminator='\n')  # quotes "(0,10]" and "12,65" as pandas does
    w.writerow(header)
    w.writerows(rows)


def log_rows(events, rand: int = 0) -> list[list]:
  rows = []
  for u, v, ms, click, like, long_view in events:
    rows.append([u, v, 20220408, 1000, T0 * 1000 + ms, click, like, 0, 0, 0, 0, long_view,
                 5000, 17200, 0, 0, 0, rand, 1])
  return rows


def write_world(path, log_1=LOG_1, log_2=LOG_2, users=USERS, videos=VIDEOS, v: str = 'pure',
                parts: int = 0) -> str:
  """The files of a variant in ``path``; ``parts`` > 0 splits log 1 into 27K-style pieces."""
  os.makedirs(path, exist_ok=True)
  if parts:
    for p in range(parts):
      write_csv_file(path, f'log_standard_4_08_to_4_21_{v}_part{p + 1}.csv', LOG_HEADER,
           log_rows(log_1[p::parts]))
  else:
    write_csv_file(path, f'log_standard_4_08_to_4_21_{v}.csv', LOG_HEADER, log_rows(log_1))
  write_csv_file(path, f'log_standard_4_22_to_5_08_{v}.csv', LOG_HEADER, log_rows(log_2))
  write_csv_file(path, f'log_random_4_22_to_5_08_{v}.csv', LOG_HEADER,
                 log_rows(LOG_RANDOM, rand=1))
  write_csv_file(path, f'user_features_{v}.csv', USER_HEADER, users)
  write_csv_file(path, f'video_features_basic_{v}.csv', VIDEO_HEADER, videos)
  return str(path)
