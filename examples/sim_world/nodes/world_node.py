#!/usr/bin/env python3
"""A differential-drive robot in a square room with a round pillar in the middle.

Subscribes /cmd_vel (geometry_msgs/Twist); publishes /odom (nav_msgs/Odometry) and /scan
(sensor_msgs/LaserScan, 90 beams over 360 degrees) at ~rate Hz. The robot stops at walls instead of
passing through them. Parameters: ~room_size (m, default 10), ~rate (Hz, default 10).
"""

import math

import rospy
from geometry_msgs.msg import Quaternion, Twist
from nav_msgs.msg import Odometry
from sensor_msgs.msg import LaserScan

ROBOT_RADIUS = 0.2
PILLAR_RADIUS = 0.75
BEAMS = 90
RANGE_MAX = 12.0


def yaw_to_quaternion(yaw):
    return Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0))


class Room:
    def __init__(self, size):
        self.size = size
        self.pillar = (size / 2.0, size / 2.0)

    def is_free(self, x, y):
        inside = (
            ROBOT_RADIUS <= x <= self.size - ROBOT_RADIUS and ROBOT_RADIUS <= y <= self.size - ROBOT_RADIUS
        )
        clear_of_pillar = math.hypot(x - self.pillar[0], y - self.pillar[1]) >= PILLAR_RADIUS + ROBOT_RADIUS
        return inside and clear_of_pillar

    def ray(self, x, y, angle):
        """Distance from (x, y) along `angle` to the first wall or the pillar."""
        dx, dy = math.cos(angle), math.sin(angle)
        hits = []
        for wall, d in ((0.0, dx), (self.size, dx)):
            if abs(d) > 1e-9:
                hits.append((wall - x) / d)
        for wall, d in ((0.0, dy), (self.size, dy)):
            if abs(d) > 1e-9:
                hits.append((wall - y) / d)
        # Ray / circle intersection for the pillar.
        ox, oy = x - self.pillar[0], y - self.pillar[1]
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - PILLAR_RADIUS * PILLAR_RADIUS
        disc = b * b - c
        if disc >= 0:
            hits.append(-b - math.sqrt(disc))
        positive = [h for h in hits if h > 1e-6]
        return min(min(positive), RANGE_MAX) if positive else RANGE_MAX


class World:
    def __init__(self):
        self.room = Room(float(rospy.get_param("~room_size", 10.0)))
        self.rate_hz = float(rospy.get_param("~rate", 10.0))
        self.x, self.y, self.yaw = 1.5, 1.5, 0.3
        self.cmd = Twist()
        self.bumps = 0
        self.odom_pub = rospy.Publisher("/odom", Odometry, queue_size=10)
        self.scan_pub = rospy.Publisher("/scan", LaserScan, queue_size=10)
        rospy.Subscriber("/cmd_vel", Twist, self.on_cmd_vel, queue_size=1)

    def on_cmd_vel(self, msg):
        self.cmd = msg

    def step(self, dt):
        v, w = self.cmd.linear.x, self.cmd.angular.z
        yaw = self.yaw + w * dt
        x = self.x + v * math.cos(yaw) * dt
        y = self.y + v * math.sin(yaw) * dt
        self.yaw = math.atan2(math.sin(yaw), math.cos(yaw))
        if self.room.is_free(x, y):
            self.x, self.y = x, y
        elif abs(v) > 1e-6:
            self.bumps += 1

    def publish(self, stamp):
        odom = Odometry()
        odom.header.stamp = stamp
        odom.header.frame_id = "odom"
        odom.child_frame_id = "base_link"
        odom.pose.pose.position.x = self.x
        odom.pose.pose.position.y = self.y
        odom.pose.pose.orientation = yaw_to_quaternion(self.yaw)
        odom.twist.twist = self.cmd
        self.odom_pub.publish(odom)

        scan = LaserScan()
        scan.header.stamp = stamp
        scan.header.frame_id = "base_link"
        scan.angle_min = -math.pi
        scan.angle_increment = 2 * math.pi / BEAMS
        scan.angle_max = scan.angle_min + scan.angle_increment * (BEAMS - 1)
        scan.scan_time = 1.0 / self.rate_hz
        scan.range_min = 0.05
        scan.range_max = RANGE_MAX
        scan.ranges = [
            self.room.ray(self.x, self.y, self.yaw + scan.angle_min + i * scan.angle_increment)
            for i in range(BEAMS)
        ]
        self.scan_pub.publish(scan)

    def run(self):
        rate = rospy.Rate(self.rate_hz)
        last_log = rospy.get_time()
        rospy.loginfo("sim_world: %.1f m room, robot at (%.2f, %.2f)", self.room.size, self.x, self.y)
        while not rospy.is_shutdown():
            self.step(1.0 / self.rate_hz)
            self.publish(rospy.Time.now())
            if rospy.get_time() - last_log >= 5.0:
                last_log = rospy.get_time()
                rospy.loginfo(
                    "sim_world: robot at (%.2f, %.2f) yaw %.2f, %d bumps",
                    self.x,
                    self.y,
                    self.yaw,
                    self.bumps,
                )
            try:
                rate.sleep()
            except rospy.ROSInterruptException:
                break


if __name__ == "__main__":
    rospy.init_node("sim_world")
    World().run()
