#!/usr/bin/env python3
"""Wander around avoiding walls: drive forward, turn away while something is close in front.

Subscribes /scan (sensor_msgs/LaserScan) and /odom (nav_msgs/Odometry), publishes /cmd_vel
(geometry_msgs/Twist) at 10 Hz and logs one status line per second.
Parameters: ~speed (m/s, default 0.4), ~safe_distance (m, default 0.8).
"""

import math

import rospy
from geometry_msgs.msg import Twist
from nav_msgs.msg import Odometry
from sensor_msgs.msg import LaserScan

FRONT_HALF_ANGLE = math.radians(35)


class Wanderer:
    def __init__(self):
        self.speed = float(rospy.get_param("~speed", 0.4))
        self.safe_distance = float(rospy.get_param("~safe_distance", 0.8))
        self.front = float("inf")
        self.left_clear = 0.0
        self.right_clear = 0.0
        self.position = (0.0, 0.0)
        self.turn_direction = 1.0
        self.scans = 0
        self.pub = rospy.Publisher("/cmd_vel", Twist, queue_size=1)
        rospy.Subscriber("/scan", LaserScan, self.on_scan, queue_size=1)
        rospy.Subscriber("/odom", Odometry, self.on_odom, queue_size=1)

    def on_scan(self, scan):
        self.scans += 1
        front, left, right = [], [], []
        for i, r in enumerate(scan.ranges):
            angle = scan.angle_min + i * scan.angle_increment
            if abs(angle) <= FRONT_HALF_ANGLE:
                front.append(r)
            elif 0 < angle <= math.pi / 2:
                left.append(r)
            elif -math.pi / 2 <= angle < 0:
                right.append(r)
        self.front = min(front) if front else float("inf")
        self.left_clear = sum(left) / len(left) if left else 0.0
        self.right_clear = sum(right) / len(right) if right else 0.0

    def on_odom(self, odom):
        self.position = (odom.pose.pose.position.x, odom.pose.pose.position.y)

    def command(self):
        cmd = Twist()
        if self.scans == 0:
            return cmd  # nothing seen yet: stand still
        if self.front < self.safe_distance:
            # Keep turning the same way until the front is clear, towards the more open side.
            if self.front < self.safe_distance * 0.6:
                self.turn_direction = 1.0 if self.left_clear >= self.right_clear else -1.0
            cmd.angular.z = 1.2 * self.turn_direction
        else:
            cmd.linear.x = self.speed
            cmd.angular.z = 0.3 * math.sin(rospy.get_time() / 3.0)
        return cmd

    def run(self):
        rate = rospy.Rate(10)
        last_log = 0.0
        while not rospy.is_shutdown():
            cmd = self.command()
            self.pub.publish(cmd)
            now = rospy.get_time()
            if now - last_log >= 1.0:
                last_log = now
                rospy.loginfo(
                    "robot_controller: at (%.2f, %.2f) front %.2f m, cmd v=%.2f w=%.2f",
                    self.position[0],
                    self.position[1],
                    self.front,
                    cmd.linear.x,
                    cmd.angular.z,
                )
            try:
                rate.sleep()
            except rospy.ROSInterruptException:
                break


if __name__ == "__main__":
    rospy.init_node("robot_controller")
    Wanderer().run()
